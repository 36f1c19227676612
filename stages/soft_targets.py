"""Stage `soft_targets`: run the teacher once over every view of the training images and over
the validation images -> data/soft_targets/ (shards)."""

from kdflow.params import load_params
from kdflow.runner import run_stage
from kdflow.views import VIEW_KINDS


def main() -> None:
    params = load_params(VIEW_KINDS)
    import time

    from kdflow.data import load_prepared

    start = time.perf_counter()
    data = load_prepared(("train", "val"))
    from kdflow import artifacts, repro, soft_targets, views
    from kdflow.paths import SOFT_TARGETS_DIR

    repro.make_deterministic(params.seed)
    # the online teacher (views.teacher) runs in distill: only the images as they are are cached
    train_views = None
    if params.views.teacher == "cached":
        train_views = views.for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape)
    teacher = artifacts.load_role("teacher", safe_mode=params.teacher.safe_mode)
    cache = soft_targets.compute(teacher, data, train_views, params.views.top_k, params.views.cache_dtype)
    soft_targets.save(cache, data)
    size = sum(f.stat().st_size for f in SOFT_TARGETS_DIR.iterdir())
    print(f"soft_targets: {', '.join(f'{k} {v.shape}' for k, v in cache.items())} -> {SOFT_TARGETS_DIR}/ "
          f"({size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
