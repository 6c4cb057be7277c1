"""The creating task instance in a batch's metadata: within the API's limits, counted as reserved keys."""

from __future__ import annotations

import pytest

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.task_metadata import (
    TASK_KEYS,
    creator,
    fit,
    is_truncated,
    validate_user_metadata,
    with_task_metadata,
)
from tests.helpers import FakeTI


def test_the_pairs_name_the_task_instance_and_keep_the_users():
    merged = with_task_metadata({"team": "search"}, FakeTI(map_index=4))
    assert merged == {
        "team": "search",
        "airflow_dag_id": "dag",
        "airflow_task_id": "create",
        "airflow_run_id": "manual__1",
        "airflow_map_index": "4",
    }
    assert with_task_metadata(None, None) == {}
    assert creator(merged) == {
        "dag_id": "dag",
        "task_id": "create",
        "run_id": "manual__1",
        "map_index": 4,
        "linkable": True,
        "dag_id_complete": True,
    }
    assert creator({"team": "search"}) is None and creator(None) is None


def test_eleven_user_pairs_fit_with_the_providers_five():
    user = {f"k{i}": "v" for i in range(11)}
    assert validate_user_metadata(user) == user
    merged = with_task_metadata(user, FakeTI())
    merged[api.IDEMPOTENCY_METADATA_KEY] = "key"
    assert len(merged) == api.METADATA_MAX_PAIRS
    with pytest.raises(ValueError, match=r"metadata has 12 pairs; at most 11 are allowed \(the provider sets"):
        validate_user_metadata({f"k{i}": "v" for i in range(12)})


@pytest.mark.parametrize("key", TASK_KEYS)
def test_a_users_pair_under_a_provider_key_is_refused(key):
    with pytest.raises(ValueError, match=rf"metadata key '{key}' is reserved.*rename your key"):
        validate_user_metadata({key: "x"})


def test_a_value_too_long_is_cut_with_a_digest_and_never_linked():
    long_a, long_b = "a" * 600, "a" * 599 + "b"
    assert fit("short") == "short" and not is_truncated("short")
    cut_a, cut_b = fit(long_a), fit(long_b)
    assert len(cut_a) == api.METADATA_MAX_VALUE and is_truncated(cut_a) and cut_a != cut_b
    ti = FakeTI()
    ti.run_id = long_a
    made_by = creator(with_task_metadata(None, ti))
    assert made_by is not None and made_by["linkable"] is False and made_by["dag_id_complete"] is True
    api.validate_metadata(with_task_metadata(None, ti))  # within the API's limits
