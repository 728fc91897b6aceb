"""End-to-end sign check: the objective and diffusers' stock Euler scheduler must agree.

If the decoder learned x − ε instead of ε − x, or the timestep scale differed between training and decoding,
the model's own `decode` would produce garbage even though the training loss goes down.
"""

import torch

from conftest import psnr


def test_tiny_model_overfits_and_its_own_decode_reconstructs(overfit_tiny):
    vae, x = overfit_tiny  # a tiny DiTo after 350 AdamW steps of `dito_flow_matching_loss` on 4 images (conftest)
    with torch.no_grad():
        z = vae.encode(x).latents
        rec = vae.decode(z, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).sample
        # The same velocity field integrated with the wrong sign must fail, or the check proves nothing.
        cond = vae.upsample_latents(z)
        sample = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        for t in torch.linspace(1, 0, 21)[:-1]:
            sample = sample + 0.05 * vae.predict_velocity(sample, t * 1000, cond)  # correct: x - dt·v
        wrong = sample.clamp(-1, 1)
    assert psnr(rec, x) >= 20.0, psnr(rec, x)
    assert psnr(wrong, x) < 12.0, psnr(wrong, x)
