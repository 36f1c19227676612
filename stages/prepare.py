"""Stage `prepare`: load data.name, scale, split (seeded, stratified) -> data/prepared/."""

from kdflow.params import load_params
from kdflow.runner import run_stage
from kdflow.sources import SOURCES


def main() -> None:
    params = load_params(SOURCES)
    from kdflow.paths import PREPARED_DIR
    from kdflow.splits import prepare

    meta = prepare(params.data, params.seed)
    print(f"prepare: {meta['dataset']} {meta['sizes']} classes={meta['num_classes']} -> {PREPARED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
