"""Stage `prepare`: load data.name, scale, split (seeded, stratified) -> data/prepared/."""

from kdflow.data import prepare
from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()
    meta = prepare(params.data, params.seed)
    print(f"prepare: {meta['dataset']} {meta['sizes']} classes={meta['num_classes']} -> data/prepared/")


if __name__ == "__main__":
    run_stage(main)
