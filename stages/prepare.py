"""Stage `prepare`: load data.name, scale, split (seeded, stratified) -> data/prepared/."""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.data.sources import DataParams


class Read(Params):
    """What this stage reads of params.yaml, typed."""

    data: DataParams = DataParams()


def main() -> None:
    params = Read.load()
    from kdflow.core.paths import PREPARED_DIR
    from kdflow.data.split import prepare

    meta = prepare(params.data, params.seed)
    print(f"prepare: {meta['dataset']} {meta['sizes']} classes={meta['num_classes']} -> {PREPARED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
