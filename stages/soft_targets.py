"""Stage `soft_targets`: run the teacher once over every view of the training images (with the
images without labels, if any) and over the validation images -> data/soft_targets/ (shards)."""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.models.params import TeacherParams
from kdflow.views.params import ViewsParams


class Read(Params):
    """What this stage reads of params.yaml, typed."""

    teacher: TeacherParams = TeacherParams()
    views: ViewsParams = ViewsParams()


def main() -> None:
    params = Read.load()
    import time

    from kdflow.core.prepared import load_prepared

    start = time.perf_counter()
    data = load_prepared(("train", "val")).with_unlabeled()
    from kdflow.core.paths import SOFT_TARGETS_DIR
    from kdflow.core.runner import deterministic
    from kdflow.models.files import load_role
    from kdflow.views import cache
    from kdflow.views.table import for_training

    deterministic(params.seed)
    # the online teacher (views.teacher) runs in distill: only the images as they are are cached
    views = None
    if params.views.teacher == "cached":
        views = for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape)
    teacher = load_role("teacher", safe_mode=params.teacher.safe_mode)
    cached = cache.compute(teacher, data, views, params.views.top_k, params.views.cache_dtype)
    cache.save(cached, data)
    size = sum(f.stat().st_size for f in SOFT_TARGETS_DIR.iterdir())
    print(f"soft_targets: {', '.join(f'{k} {v.shape}' for k, v in cached.items())} -> {SOFT_TARGETS_DIR}/ "
          f"({size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
