"""stages.tasks.Measured: the distribution a model stage measures, as data. Its `narrow` is the
one place where running text's and a task's per-token stores differ: a shard's rows numbered
globally (its partners too), a task's kept at its answers."""

import numpy as np
import torch
import xarray as xr

from selfrepair.analysis.tasks import scored_tokens
from selfrepair.stages.tasks import Measured
from selfrepair.tasks import TaskPrompts


def _store(batch=3, pos=4):
    values = np.arange(batch * pos, dtype=np.float32).reshape(batch, pos)
    ds = xr.Dataset({"x": (("batch", "pos"), values)})
    return ds.assign_coords(resample_source=("batch", np.array([1, 2, 0])))


def test_a_shard_numbers_its_rows_and_partners_globally_and_keeps_every_token():
    data = Measured(torch.zeros(3, 5, dtype=torch.long), start=40)
    out = data.narrow(_store())
    assert data.scored is None and data.inputs is None
    assert out.batch.values.tolist() == [40, 41, 42]
    assert out.resample_source.values.tolist() == [41, 42, 40]
    np.testing.assert_array_equal(out.x.values, _store().x.values)


def test_a_task_keeps_its_answers_on_one_token_axis():
    scored = np.zeros((3, 4), bool)
    scored[0, 2] = scored[2, 1] = scored[2, 3] = True
    zeros = np.zeros((3, 5), np.int32)
    prompts = TaskPrompts(zeros, zeros, scored, zeros[:, 1:], scored, np.full(3, 5), ["a"] * 3)
    data = Measured(torch.zeros(3, 5, dtype=torch.long), prompts=prompts)
    out = data.narrow(_store())
    assert data.scored is scored
    assert out.x.values.tolist() == [2.0, 9.0, 11.0]
    assert out.identical(scored_tokens(_store(), scored))
