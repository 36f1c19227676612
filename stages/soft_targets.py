"""Stage `soft_targets`: run the teacher once over every view of the training images and over
the validation images -> data/soft_targets/ (shards)."""

from kdflow.params import load_params
from kdflow.runner import run_stage


def main() -> None:
    params = load_params()
    import time

    from kdflow import artifacts, repro, soft_targets, views
    from kdflow.data import load_prepared
    from kdflow.paths import SOFT_TARGETS_DIR

    start = time.perf_counter()
    repro.make_deterministic(params.seed)
    data = load_prepared(("train", "val"))
    train_views = views.for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape)
    teacher = artifacts.load_role("teacher", safe_mode=params.teacher.safe_mode)
    feature_layer = params.fitnet.teacher_layer if params.distill.needs_teacher_features else None
    cache = soft_targets.compute(teacher, data, feature_layer, train_views, params.views.top_k)
    soft_targets.save(cache, data)
    size = sum(f.stat().st_size for f in SOFT_TARGETS_DIR.iterdir())
    print(f"soft_targets: {', '.join(f'{k} {v.shape}' for k, v in cache.items())} -> {SOFT_TARGETS_DIR}/ "
          f"({size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
