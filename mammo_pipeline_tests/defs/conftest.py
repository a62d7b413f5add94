"""Fixtures for the Dagster tests: one test instance per module, emptied of partitions before each test."""

import dagster as dg
import pytest


@pytest.fixture(scope="module")
def shared_instance():
    with dg.instance_for_test() as inst:  # has an instance ref, which partitioned run requests need
        yield inst


@pytest.fixture
def instance(shared_instance):
    """The module's instance with no hospital partitions (creating one per test costs seconds)."""
    for key in shared_instance.get_dynamic_partitions("hospital"):
        shared_instance.delete_dynamic_partition("hospital", key)
    return shared_instance
