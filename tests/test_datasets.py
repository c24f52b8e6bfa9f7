"""The dataset axis (issue 35): a rule with the {dataset} wildcard serves running text ("") and
each task ("tasks/<task>/", one shard); the estimates size a task's job on its answers; the
task's clean metric is read back from its clean store in the order it was computed."""

import json

import numpy as np

import selfrepair.config as sr_config
from selfrepair.analysis.tasks import CLEAN_METRIC_KEYS, clean_metric, clean_metric_record


def test_a_dataset_wildcard_names_running_text_or_one_task():
    assert sr_config.dataset_of(None) == "" and sr_config.dataset_task("") is None
    assert sr_config.dataset_of("ioi@seed5") == "tasks/ioi@seed5/"
    assert sr_config.dataset_task(sr_config.dataset_of("ioi@seed5")) == "ioi@seed5"
    assert sr_config.job_task({"model": "m", "task": "ioi"}) == "ioi"
    assert sr_config.job_task({"model": "m", "dataset": "tasks/ioi/", "shard": "000"}) == "ioi"
    assert sr_config.job_task({"model": "m", "dataset": "", "shard": "003"}) is None
    assert sr_config.job_task({"model": "m"}) is None


def test_a_task_job_of_a_dataset_rule_is_estimated_as_the_task_rule_was():
    from selfrepair.config.layout import estimated_as

    text = {"model": "m", "dataset": "", "shard": "001"}
    task = {"model": "m", "dataset": "tasks/ioi/", "shard": "000"}
    assert estimated_as("clean_cache", text) == ("clean_cache", text)
    assert estimated_as("clean_cache", task) == ("task_clean", task | {"task": "ioi"})
    assert estimated_as("ablate", text) == ("ablate", text)


def test_the_clean_metric_comes_back_from_the_store_attributes_in_its_order():
    """task_metric writes what clean_cache computed, key for key in clean_metric's order (the
    JSON's bytes), whatever else the store's provenance holds."""
    scored = np.array([[False, True, True], [False, False, True]])
    baseline = np.array([[True, False, False], [True, False, False]])
    logit = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    numbers = clean_metric(logit, logit > 0, -logit, scored, baseline, "logit_diff")
    numbers["induction_scores"] = [[0.5, 0.25]]
    assert list(numbers) == [k for k in CLEAN_METRIC_KEYS if k in numbers]
    attrs = {"model": "m", "seed": 0, **numbers, "selfrepair_place": "m/tasks/t/clean"}
    attrs = json.loads(json.dumps(attrs, sort_keys=True))  # as a store may hand them back
    assert json.dumps(clean_metric_record(attrs)) == json.dumps(numbers)
