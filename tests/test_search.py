"""The recipe search's grid and its choice, on experiment records as `dvc exp show --json` gives
them (the real queue, apply and resume run in tests/test_pipeline_dvc.py)."""

import pytest

from conftest import ROOT
from kdflow.core import KdflowError
from kdflow.search import grid
from kdflow.search.grid import NO_DISTILLATION, Distilled, default_grid, parse_grid
from kdflow.search.ranking import Experiment, choose, experiments, ranked, tied

WORKSPACE = {"alpha": 0.1, "temperature": 2.0, "distill.method": "kd", "train_student.patience": None}
# which params change only the distilled students: as the project's dvc.yaml lists them
DISTILLED = Distilled(ROOT / "dvc.yaml")
KNOWN = {*WORKSPACE, "views.count", "views.mix", "distill.dkd.beta", "data.labels_per_class", "teacher.ensemble"}


def recipes(axes: dict, workspace: dict) -> list[dict]:
    return grid.recipes(axes, workspace, KNOWN, DISTILLED)


def test_the_params_that_change_only_the_distilled_students_are_read_from_dvc_yaml():
    assert [key for key in ("alpha", "temperature", "distill.method", "distill.dkd.beta", "views.count",
                            "train_student.epochs", "teacher.safe_mode", "export.calibration_samples")
            if DISTILLED(key)] == ["alpha", "temperature", "distill.method", "distill.dkd.beta"]
    assert DISTILLED.baseline_part({"alpha": 0.5, "views.count": 0}) == {"views.count": 0}


def test_the_grid_always_holds_no_distillation_once_and_refuses_unknown_params():
    grid = parse_grid(["alpha=0.5,1.0", "temperature=2,4"])
    assert grid == {"alpha": [0.5, 1.0], "temperature": [2, 4]}
    found = recipes(grid, WORKSPACE)
    # alpha = 1 with kd ignores the temperature: one recipe for it, first, whatever the grid says.
    assert found == [NO_DISTILLATION, {"alpha": 0.5, "temperature": 2}, {"alpha": 0.5, "temperature": 4}]
    assert recipes({"temperature": [4]}, WORKSPACE) == [NO_DISTILLATION, {"temperature": 4}]
    # The default grid: without views, and the workspace's views unmixed, mixup and cutmix, each
    # with its own alpha = 1.
    default = recipes(default_grid({**WORKSPACE, "views.count": 8}), {**WORKSPACE, "views.count": 8})
    assert len(default) == 20 and default[:4] == [{"views.count": 0, **NO_DISTILLATION}] + [
        {"views.count": 8, "views.mix": mix, **NO_DISTILLATION} for mix in ("none", "mixup", "cutmix")]
    assert default_grid({**WORKSPACE, "views.count": 0})["views.count"] == [0]
    # Without views, how views would be mixed changes nothing: one recipe, not one per mix.
    no_views = recipes({"views.count": [0, 8], "views.mix": ["none", "mixup"]}, {**WORKSPACE, "views.count": 8})
    assert no_views[:3] == [{"views.count": 0, **NO_DISTILLATION},
                            {"views.count": 8, "views.mix": "none", **NO_DISTILLATION},
                            {"views.count": 8, "views.mix": "mixup", **NO_DISTILLATION}] and len(no_views) == 6
    # With another method alpha = 1 still means "kd without the soft term": the scratch students.
    assert recipes({"distill.method": ["dkd"]}, WORKSPACE)[0] == NO_DISTILLATION
    with pytest.raises(KdflowError, match="-S alpah: no such param"):
        recipes({"alpah": [0.5]}, WORKSPACE)
    # How many labels there are is data, not a recipe; an ensemble's average is a recipe (of the teacher)
    with pytest.raises(KdflowError, match="^-S data.labels_per_class: the data is not a recipe"):
        recipes({"data.labels_per_class": [10, 50]}, {**WORKSPACE, "data.labels_per_class": None})
    assert recipes({"teacher.ensemble": ["logits"]}, {**WORKSPACE, "teacher.ensemble": "probabilities"})[-1] == {
        "teacher.ensemble": "logits"}
    for bad in ("alpha", "alpha=", "=0.5"):
        with pytest.raises(KdflowError, match="expected key=value"):
            parse_grid([bad])


def test_a_recipe_matches_an_experiment_whose_params_dvc_shows_without_nulls():
    shown = {"alpha": 0.5, "temperature": 4.0, "distill.method": "kd"}  # patience: null left out
    assert grid.matches(shown, {"alpha": 0.5, "temperature": 4}, WORKSPACE, DISTILLED)
    assert not grid.matches(shown, {"alpha": 0.5}, WORKSPACE, DISTILLED)  # temperature differs from the workspace's
    # Without distillation the temperature is not used: any finished alpha = 1 run matches.
    assert grid.matches({**shown, "alpha": 1.0}, NO_DISTILLATION, WORKSPACE, DISTILLED)
    assert not grid.matches({**shown, "alpha": 1.0, "train_student.patience": 5}, NO_DISTILLATION, WORKSPACE,
                            DISTILLED)


def _rev(name, alpha, val_distilled, val_scratch, test_gain, timestamp="2026-11-24T10:00:00"):
    def per_repeat(values):
        return {"data": {f"repeat_{i}": {"val_accuracy": v} for i, v in enumerate(values)}}

    metrics = {"metrics/distill.json": per_repeat(val_distilled), "metrics/train_scratch.json": per_repeat(val_scratch),
               "metrics/train_plain.json": per_repeat(val_scratch),
               "metrics/evaluate.json": {"data": {"kd_gain": {"mean": test_gain}}}}
    return {"rev": name, "name": name,
            "data": {"timestamp": timestamp, "params": {"params.yaml": {"data": {"alpha": alpha}}}, "metrics": metrics}}


def test_the_choice_is_made_on_validation_even_where_test_disagrees():
    scratch = [0.90, 0.91, 0.92, 0.90, 0.91]
    show = [{"rev": "workspace", "data": {}},
            {"rev": "abc1234", "name": "main", "data": _rev("main", 0.1, scratch, scratch, 0.0)["data"],
             "experiments": [{"revs": [
                 # Best on test (+3 points) but worse than scratch on validation:
                 _rev("exp-test-best", 0.9, [0.89, 0.90, 0.91, 0.89, 0.90], scratch, 0.03),
                 # +1 point on validation, worse on test:
                 _rev("exp-val-best", 0.5, [0.91, 0.92, 0.93, 0.91, 0.92], scratch, -0.01),
                 # +0.4 on validation, noisy:
                 _rev("exp-noisy", 0.3, [0.93, 0.89, 0.94, 0.88, 0.93], scratch, 0.02),
                 _rev("exp-no-kd", 1.0, scratch, scratch, 0.0),
                 _rev("exp-queued", 0.7, [0.99] * 5, scratch, 0.05, timestamp=None),  # not finished: left out
             ]}]}]
    found = experiments(show)
    assert [e.name for e in ranked(found)] == ["exp-val-best", "exp-noisy", "main", "exp-no-kd", "exp-test-best"]
    assert next(e for e in found if e.name == "main").baseline
    # With no recipe above zero on validation, no distillation (a gain of exactly 0) is chosen.
    assert ranked([e for e in found if e.name in ("exp-test-best", "exp-no-kd")])[0].name == "exp-no-kd"


def test_a_grid_over_the_views_chooses_them_on_the_scratch_students_first():
    """8x8 digits with 2-pixel shifts: the views cripple the scratch students, so distillation on
    them shows a large gain over a weak baseline; the students without views are better."""
    found = recipes({"views.count": [0, 8], "alpha": [0.5]}, {**WORKSPACE, "views.count": 8})
    assert found == [{"views.count": 0, **NO_DISTILLATION}, {"views.count": 8, **NO_DISTILLATION},
                     {"views.count": 0, "alpha": 0.5}, {"views.count": 8, "alpha": 0.5}]

    def exp(name, distilled, scratch):
        return Experiment(name, {}, {"distilled": distilled, "scratch": scratch, "plain": scratch}, None)

    plain, crippled = [0.98, 0.985, 0.975], [0.85, 0.86, 0.84]
    done = list(zip(found, [exp("no-kd-0", plain, plain), exp("no-kd-8", crippled, crippled),
                            exp("kd-0", [0.985, 0.99, 0.98], plain), exp("kd-8", [0.95, 0.96, 0.94], crippled)]))
    order, settings = choose(done, DISTILLED)
    assert settings == [{"views.count": 0}]
    assert [e.name for e in order] == ["kd-0", "no-kd-0", "kd-8", "no-kd-8"]
    order, settings = choose(done[1::2], DISTILLED)  # one setting only: ranked by the KD gain alone
    assert settings is None and [e.name for e in order] == ["kd-8", "no-kd-8"]


def test_settings_whose_scratch_students_are_within_the_noise_of_the_best_are_tied():
    """The embedded digits' first function-matching search: mixup's scratch students led by 0.16
    points (paired CI [-1.08, +0.76]), cutmix's trailed by 1.24 [-2.21, -0.27]. Mixup and no mix
    are tied, so the KD recipes of both compete; cutmix's gain over its weaker baseline does not."""
    found = recipes({"views.mix": ["none", "mixup", "cutmix"], "alpha": [0.1]}, WORKSPACE)

    def exp(name, distilled, scratch):
        return Experiment(name, {}, {"distilled": distilled, "scratch": scratch, "plain": scratch}, None)

    none, mixup, cutmix = ([0.966, 0.962, 0.972, 0.974, 0.964], [0.976, 0.97, 0.97, 0.966, 0.964],
                           [0.95, 0.96, 0.96, 0.956, 0.958])
    done = list(zip(found, [exp("no-kd-none", none, none), exp("no-kd-mixup", mixup, mixup),
                            exp("no-kd-cutmix", cutmix, cutmix),
                            exp("kd-none", [0.972, 0.972, 0.976, 0.976, 0.972], none),
                            exp("kd-mixup", [0.964, 0.962, 0.966, 0.962, 0.962], mixup),
                            exp("kd-cutmix", [0.972, 0.974, 0.972, 0.974, 0.972], cutmix)]))
    order, settings = choose(done, DISTILLED)
    assert settings == [{"views.mix": "none"}, {"views.mix": "mixup"}]
    assert [e.name for e in order][:4] == ["kd-none", "no-kd-none", "no-kd-mixup", "kd-mixup"]
    assert order[4].name == "kd-cutmix"  # the largest gain, over a baseline clearly weaker
    assert not tied([0.95, 0.96], [0.97, 0.98]) and tied([0.97], [0.97]) and not tied([0.96], [0.97])


def test_runs_are_read_from_dvcs_executor_state_and_duplicates_are_said(capsys):
    """What `dvc exp show --json` says of each run (the executor's state and process), as the
    crash recovery reads it; a recipe finished twice is ranked once, and the search says so."""
    from kdflow.search.queue import dead, runs
    from kdflow.search.supervise import Search

    scratch = [0.90, 0.91]

    def entry(rev, state, pid=None):
        rev["data"]["params"]["params.yaml"]["data"]["distill"] = {"method": "kd"}
        return {"executor": {"state": state, "local": {"pid": pid}}, "name": rev["name"], "revs": [rev]}

    def unfinished(name, alpha, timestamp):
        return {"rev": name, "name": name, "data": {"timestamp": timestamp, "metrics": {},
                                                    "params": {"params.yaml": {"data": {"alpha": alpha}}}}}

    show = [{"rev": "workspace", "data": {}},
            {"rev": "abc1234", "name": "main", "data": _rev("main", 0.1, scratch, scratch, 0.0)["data"],
             "experiments": [entry(_rev("twice-a", 0.5, [0.92, 0.93], scratch, 0.01), "success"),
                             entry(_rev("twice-b", 0.5, [0.92, 0.93], scratch, 0.01), None),
                             # queued: a commit time (its stash commit's) but no metrics yet
                             entry(unfinished("waiting", 0.7, "2026-11-24T10:00:00"), "queued"),
                             entry(unfinished("gone", 0.9, None), "running", pid=2**22 + 1)]}]
    found = {run.name: run for run in runs(show)}
    assert {name: run.state for name, run in found.items()} == {
        "twice-a": "success", "twice-b": None, "waiting": "queued", "gone": "running"}
    assert dead(found["gone"], active_workers=0)
    assert not dead(found["gone"], active_workers=1)  # a busy worker may be collecting it
    assert not dead(found["waiting"], active_workers=0)

    workspace = {"alpha": 0.1, "distill.method": "kd"}
    search = Search([{"alpha": 0.5}, {"alpha": 0.7}, {"alpha": 0.9}], workspace, DISTILLED, jobs=1, give_up_after=5)
    (_, twice, _), (_, queued, _), (_, running, _) = search.results(show)
    assert twice.name == "twice-a" and queued is None and running is None
    said = capsys.readouterr().out
    assert "search: alpha=0.5: 2 finished experiments (twice-a, twice-b): the ranking uses twice-a" in said


def test_parts_of_a_grid_are_dealt_the_same_on_every_host():
    """`--part i/n`: every recipe in exactly one part, in grid order; alpha = 1 in part 1 when only
    the distillation knobs vary; whole settings (their scratch students trained on one host) when
    the grid has as many settings as parts."""
    import argparse

    from kdflow.search.commands import part_of
    from kdflow.search.grid import share

    knobs = recipes({"alpha": [0.3, 0.5, 0.7], "temperature": [2, 4]}, WORKSPACE)
    parts = [share(knobs, i, 3, DISTILLED) for i in (1, 2, 3)]
    assert sorted(map(str, sum(parts, []))) == sorted(map(str, knobs)) and len(knobs) == 7
    assert parts[0][0] == NO_DISTILLATION and [len(p) for p in parts] == [3, 2, 2]
    assert all(p == sorted(p, key=knobs.index) for p in parts)
    assert share(knobs, 2, 3, DISTILLED) == parts[1]  # the same on every call, so on every host
    assert share(recipes({"alpha": [0.3]}, WORKSPACE), 2, 2, DISTILLED) == [{"alpha": 0.3}]

    views = recipes({"views.count": [0, 8], "alpha": [0.3, 0.5]}, {**WORKSPACE, "views.count": 8})
    first, second = (share(views, i, 2, DISTILLED) for i in (1, 2))
    assert {r["views.count"] for r in first} == {0} and {r["views.count"] for r in second} == {8}
    assert first[0] == {"views.count": 0, **NO_DISTILLATION} and len(first) == len(second) == 3
    # More hosts than settings: recipes are dealt one by one, every alpha = 1 to part 1.
    thirds = [share(views, i, 3, DISTILLED) for i in (1, 2, 3)]
    assert [r for r in thirds[0] if r.get("alpha") == 1.0] == [r for r in views if r.get("alpha") == 1.0]
    assert sorted(map(str, sum(thirds, []))) == sorted(map(str, views))

    assert part_of("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected I/N"):
            part_of(bad)


def test_with_images_without_labels_pseudo_labels_are_ranked_by_their_own_gain_and_no_gain_is_said(in_tmp, capsys):
    """alpha = 1 is then the pseudo-labelled students, not the scratch students: ranked by their
    paired validation gain like any recipe; when even the best recipe is below the scratch
    students, the search says that the images did not help."""
    from kdflow.search.commands import choose_and_apply

    found = recipes({"alpha": [0.1]}, WORKSPACE)
    scratch = [0.916, 0.92, 0.91]

    def exp(name, distilled):
        return Experiment(name, {}, {"distilled": distilled, "scratch": scratch, "plain": scratch}, None)

    pseudo, soft = exp("pseudo", [0.95, 0.952, 0.948]), exp("soft", [0.949, 0.95, 0.947])
    order, _ = choose(list(zip(found, [pseudo, soft])), DISTILLED)
    assert [e.name for e in order] == ["pseudo", "soft"] and pseudo.val_gain("distilled", "scratch")["mean"] > 0
    choose_and_apply([(r, e, None) for r, e in zip(found, [pseudo, soft])], DISTILLED, apply=False)
    assert "WARNING" not in capsys.readouterr().out
    worse = [(r, exp(name, [0.90, 0.905, 0.9]), None) for r, name in zip(found, ("pseudo", "soft"))]
    choose_and_apply(worse, DISTILLED, apply=False)
    assert ("search: WARNING: no recipe beat the scratch students on validation, pseudo-labels (alpha = 1) "
            "included: the images without labels did not help here") in capsys.readouterr().out
