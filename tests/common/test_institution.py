from __future__ import annotations

from common.institution import institution_name


def test_a_hospital_keeps_the_name_it_gave() -> None:
    assert institution_name("st-mary", node_id=7) == "st-mary"
    assert institution_name("", node_id=7) == ""  # given, even if empty: as Flower's .get(key, default) did


def test_a_hospital_without_a_name_is_named_by_its_node_id() -> None:
    assert institution_name(None, node_id=7) == "node-7"
