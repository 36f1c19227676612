"""Stage `soft_targets`: run the teacher once over train/val -> data/soft_targets/logits.npz."""

from kdflow.params import load_params
from kdflow.runner import run_stage


def main() -> None:
    params = load_params()
    from kdflow import artifacts, repro, soft_targets
    from kdflow.data import load_prepared
    from kdflow.paths import SOFT_TARGETS

    repro.make_deterministic(params.seed)
    data = load_prepared(("train", "val"))
    teacher = artifacts.load_role("teacher", safe_mode=params.teacher.safe_mode)
    feature_layer = params.fitnet.teacher_layer if params.distill.needs_teacher_features else None
    cache = soft_targets.compute(teacher, data, feature_layer)
    soft_targets.save(cache, data)
    print(f"soft_targets: {', '.join(f'{k} {v.shape}' for k, v in cache.items())} -> {SOFT_TARGETS}")


if __name__ == "__main__":
    run_stage(main)
