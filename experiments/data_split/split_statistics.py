"""Statistics of the bundled-photo split (`diffusers_dito.sample_data`): both sides, overall and per photo.

For each side: high-frequency energy (spectral power per pixel above half the Nyquist frequency: the band the
high-frequency ratio compares), and the mean and std of each RGB channel in [0, 1]. The two sides must come from the
same distribution: their high-frequency energy within 1.5× of each other.

    python experiments/data_split/split_statistics.py --json experiments/data_split/results/statistics.json
"""

import argparse

from diffusers_dito.benchmarking import markdown_table, write_json
from diffusers_dito.sample_data import PHOTOS, split_crops, split_statistics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="Crop side (the demo's resolution).")
    parser.add_argument("--num_train_crops", type=int, default=4096, help="The demo's training crops (seed 0).")
    parser.add_argument("--num_held_out_crops", type=int, default=1024, help="Held-out crops (seed 1).")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(args) -> dict:
    sides = {
        "train": split_crops("train", args.num_train_crops, args.size, seed=0),
        "held_out": split_crops("held_out", args.num_held_out_crops, args.size, seed=1),
    }
    stats = {name: split_statistics(images) for name, images in sides.items()}
    ratio = stats["train"]["hf_energy"] / stats["held_out"]["hf_energy"]
    rows = [{"side": name, "crops": len(sides[name]), **s} for name, s in stats.items()]
    per_photo = []
    for k, photo in enumerate(PHOTOS):  # crops are round-robin over PHOTOS
        row = {"photo": photo}
        for name, images in sides.items():
            row[f"{name}_hf_energy"] = split_statistics(images[k :: len(PHOTOS)])["hf_energy"]
        per_photo.append(row)
    print(f"\n## Split statistics ({args.size}² crops)\n")
    print(markdown_table(rows))
    print(f"\ntrain / held-out high-frequency energy: {ratio:.3f} (must be within [1/1.5, 1.5])\n")
    print(markdown_table(per_photo))
    result = {"size": args.size, "sides": stats, "hf_energy_ratio_train_over_held_out": ratio, "per_photo": per_photo}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
