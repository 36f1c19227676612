"""Stage `prepare`: load data.name, scale, split (seeded, stratified) -> data/prepared/."""

from kdflow.params import load_params
from kdflow.runner import run_stage


def main() -> None:
    params = load_params()
    from kdflow.data import prepare
    from kdflow.paths import PREPARED_DIR

    meta = prepare(params.data, params.seed)
    print(f"prepare: {meta['dataset']} {meta['sizes']} classes={meta['num_classes']} -> {PREPARED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
