"""Profile files: what `partitioner profile` writes loads back; a damaged or edited one is one error naming the
field, never a timing no device takes."""

from __future__ import annotations

import json

import pytest

from cost_models.profile import DeviceIdentity, OpMeasurement, Profile, load_profile
from partitioner.errors import PartitionerError
from targets.spec import Link

PROFILE = Profile(DeviceIdentity("cpu", "Test CPU", "2.13.0", 2),
                  {"add": OpMeasurement(2e-6, 100, 1200, "float32", "aten.add.Tensor")},
                  {"host_to_device": Link(1e-5, 1e10)})


def edited(edit) -> dict:
    data = PROFILE.to_dict()
    edit(data)
    return data


def test_a_profile_round_trips_through_its_file(tmp_path):
    assert load_profile(PROFILE.save(tmp_path)) == PROFILE


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d["ops"]["add"].update(seconds=1e400), "field 'ops.add.seconds': inf is not a finite number"),
    (lambda d: d["ops"]["add"].update(seconds=1e300), "field 'ops.add.seconds': 1e+300 is above 3600"),
    (lambda d: d["ops"]["add"].update(seconds=0), "field 'ops.add.seconds': 0 is not above 0"),
    (lambda d: d["ops"]["add"].update(flops=-1), "field 'ops.add.flops': -1 is below 0"),
    (lambda d: d["ops"]["add"].update(kind="teapot"), "field 'ops.add.kind': 'teapot' is not one of compute, view"),
    (lambda d: d["identity"].update(threads="2"), "field 'identity.threads': expected a whole number, got '2'"),
    (lambda d: d["links"]["host_to_device"].update(bandwidth_bytes_per_second=0),
     "field 'links.host_to_device.bandwidth_bytes_per_second': 0 is not above 0"),
    (lambda d: d.update(ops=[]), "field 'ops': expected an object, got []"),
], ids=["infinite", "absurd", "zero", "negative work", "kind", "threads", "link", "ops a list"])
def test_a_profile_with_a_field_no_measurement_has_is_refused_naming_it(tmp_path, edit, problem):
    path = tmp_path / "cpu-000000000000.json"
    path.write_text(json.dumps(edited(edit)).replace("Infinity", "1e400"))

    with pytest.raises(PartitionerError) as caught:
        load_profile(path)

    assert str(caught.value).startswith(f"{path}: not a readable profile ({problem})")
    assert str(caught.value).endswith("Fix: delete it and run partitioner profile again.")


@pytest.mark.parametrize("text, problem", [("[1, 2]", "a profile holds a JSON object, not a JSON list"),
                                           ('{"seconds": NaN}', "it holds NaN")])
def test_a_file_that_is_no_profile_at_all_is_refused(tmp_path, text, problem):
    path = tmp_path / "cpu-000000000000.json"
    path.write_text(text)

    with pytest.raises(PartitionerError, match=problem):
        load_profile(path)


def test_a_profile_is_never_written_with_a_figure_json_cannot_hold(tmp_path):
    broken = Profile(PROFILE.identity, {"add": OpMeasurement(float("inf"), 100, 1200, "float32")})

    with pytest.raises(AssertionError, match=r"ops.add.seconds \(inf\) is not finite"):
        broken.save(tmp_path)
    assert list(tmp_path.iterdir()) == []
