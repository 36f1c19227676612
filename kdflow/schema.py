"""params.yaml, every section typed: the whole schema in one place.

The core sections are kdflow.core.params'; the others are typed next to the entries that bring
their keys: ``data`` by the dataset sources, ``teacher`` and ``student`` by the architecture
families, ``views`` by the view kinds and mixes, ``distill`` by the distillation methods.
`kdflow check`, the recipe search, the docs' params reference and the tests read it. No stage
imports it: each validates the sections it reads (its script's ``Read``), so a method's code is no
dependency of the teacher's stage.
"""

from __future__ import annotations

from kdflow.core.params import Params
from kdflow.data.sources import DataParams
from kdflow.distill.methods import DistillParams
from kdflow.models.params import StudentParams, TeacherParams
from kdflow.views.params import ViewsParams


class Schema(Params):
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    views: ViewsParams = ViewsParams()
    distill: DistillParams = DistillParams()
