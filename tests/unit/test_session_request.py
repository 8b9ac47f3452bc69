"""Options checked against profiles, group limits and the user's Slurm associations and
reservations (pure logic, the example site)."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from bioimage_gateway.session_request import (
    ActiveReservation,
    Association,
    Charge,
    ChargeChoices,
    InvalidRequest,
    SlurmAccess,
    allowed_profiles,
    effective_limits,
    resolve_request,
)
from bioimage_gateway.settings import SettingsError, load_settings, parse_settings

EXAMPLE = resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml")
SITE = load_settings(str(EXAMPLE))
# Slurm's answer when it was never had: only the example's own names count.
NOT_ASKED = SlurmAccess("alice")


def load_settings_data(change):
    data = yaml.safe_load(EXAMPLE.read_text())
    change(data)
    return parse_settings(data)


def refusal(change) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings_data(change)
    return str(info.value)


def test_defaults_fill_what_the_user_left_out():
    request = resolve_request(SITE, ["imaging"], {"profile": "cpu"}, NOT_ASKED)
    assert (request.cpus, request.memory_gb, request.gpus, request.walltime) == (4, 16, 0, "8:00:00")


def test_groups_decide_which_profiles_are_offered():
    assert [p.slug for p in allowed_profiles(SITE, ["trainers"])] == ["workshop"]
    assert [p.slug for p in allowed_profiles(SITE, ["nobody"])] == []


def test_group_limit_caps_below_the_profile_maximum():
    # workshop-participants may not use GPUs even on a GPU-capable profile list.
    limits = effective_limits(SITE, ["workshop-participants"])
    assert limits.max_cpus == 2 and limits.max_gpus == 0
    with pytest.raises(InvalidRequest, match="more than your groups' limit of 4"):
        # default_limits apply to ai-developers (not listed): 4 CPUs at most.
        resolve_request(SITE, ["ai-developers"], {"profile": "gpu", "cpus": 8}, NOT_ASKED)


def test_most_generous_group_wins():
    limits = effective_limits(SITE, ["workshop-participants", "imaging"])
    assert limits.max_cpus == 32 and limits.max_sessions == 2


def test_fixed_amount_cannot_be_raised():
    with pytest.raises(InvalidRequest, match="CPUs: 3 is more than the 2 allowed for Workshop"):
        resolve_request(SITE, ["trainers"], {"profile": "workshop", "cpus": "3"}, NOT_ASKED)


def test_gpu_profile_needs_at_least_one_gpu():
    with pytest.raises(InvalidRequest, match="GPUs: 0 is less than 1 for GPU"):
        resolve_request(SITE, ["imaging"], {"profile": "gpu", "gpus": 0}, NOT_ASKED)


# ---- the Slurm account, QoS and reservation a session is charged to ------------------------

ALICE = SlurmAccess(
    "alice",
    associations=(
        Association("imaging-facility", ("normal",)),
        Association("lightsheet-lab", ("normal", "long"), default_qos="long"),
    ),
    default_account="imaging-facility",
    reservations=(
        ActiveReservation("bob-only", users=frozenset({"bob"})),
        ActiveReservation("lab-course", accounts=frozenset({"lightsheet-lab"}), end="later"),
        ActiveReservation("alice-demo", users=frozenset({"alice"})),
    ),
)


def charge(raw, groups=("imaging",), access=ALICE):
    return resolve_request(SITE, list(groups), raw, access).charge


def test_the_profile_preselects_and_the_user_chooses_among_their_own_accounts():
    assert charge({"profile": "cpu"}) == Charge("imaging-facility", None, None)
    chosen = charge({"profile": "cpu", "account": "lightsheet-lab"})
    # The account's own default QoS comes with it.
    assert chosen == Charge("lightsheet-lab", "long", None)
    assert charge({"profile": "cpu", "account": "lightsheet-lab", "qos": "normal"}).qos == "normal"
    # An empty name leaves the choice to Slurm (no --qos).
    assert charge({"profile": "cpu", "account": "lightsheet-lab", "qos": ""}).qos is None


def test_a_profile_account_the_user_lacks_gives_way_to_their_default_account():
    lab_only = SlurmAccess("carol", (Association("lightsheet-lab", ("normal",)),),
                           default_account="lightsheet-lab", reservations=())
    assert charge({"profile": "cpu"}, access=lab_only).account == "lightsheet-lab"


@pytest.mark.parametrize(("raw", "message"), [
    ({"account": "training"},
     "Slurm account 'training' is not one of yours (yours: imaging-facility, lightsheet-lab)"),
    ({"account": "imaging-facility\n#SBATCH --uid=0"},
     "Slurm account 'imaging-facility\\n#SBATCH --uid=0' is not one of yours"),
    ({"account": "x" * 5000}, "Slurm account 'xxxxxxxx"),
    ({"account": 7}, "Slurm account: 7 is not a name"),
    ({"account": ["imaging-facility", "lightsheet-lab"]}, "expected one value"),
    ({"qos": "long"}, "QoS 'long' is not allowed for your account 'imaging-facility' "
                      "(allowed: normal)"),
    ({"reservation": "bob-only"}, "reservation 'bob-only' is not an active reservation open "
                                  "to you with account 'imaging-facility'"),
    ({"reservation": "lab-course"}, "reservation 'lab-course' is not an active reservation"),
    ({"reservation": "course-2026-12"}, "reservation 'course-2026-12' is not an active"),
])
def test_names_that_are_not_the_users_are_refused_naming_them(raw, message):
    with pytest.raises(InvalidRequest) as info:
        charge({"profile": "cpu", **raw})
    assert message in str(info.value)
    assert len(str(info.value)) < 300


def test_reservations_are_open_by_user_name_or_by_the_account_charged():
    assert charge({"profile": "cpu", "reservation": "alice-demo"}).reservation == "alice-demo"
    assert charge({"profile": "cpu", "account": "lightsheet-lab",
                   "reservation": "lab-course"}).reservation == "lab-course"
    choices = ChargeChoices.for_site(SITE.profile("cpu"), ALICE, SITE.slurm)
    assert choices.reservations("imaging-facility") == ["alice-demo"]
    assert choices.reservations("lightsheet-lab") == ["lab-course", "alice-demo"]


def test_a_profile_reservation_is_preselected_only_while_open_to_the_user():
    def lab_course_default(data):
        data["slurm"]["reservations"].append("lab-course")
        data["profiles"][0]["reservation"] = "lab-course"

    site = load_settings_data(lab_course_default)
    cpu = site.profile("cpu")
    assert ChargeChoices.for_site(cpu, ALICE, site.slurm).default_reservation("lightsheet-lab") == "lab-course"
    assert ChargeChoices.for_site(cpu, ALICE, site.slurm).default_reservation("imaging-facility") is None
    # Chosen away on the form ("" = none), it stays away when the hub checks the stored options.
    request = resolve_request(site, ["imaging"], {"profile": "cpu", "account": "lightsheet-lab",
                                                  "reservation": ""}, ALICE)
    again = resolve_request(site, ["imaging"], request.as_options(), ALICE)
    assert request.charge.reservation is again.charge.reservation is None
    assert again.charge == request.charge


def test_a_locked_profile_charges_its_own_names_whatever_the_user_sends():
    trainer = SlurmAccess("tom", (Association("training", ("normal", "workshop")),
                                  Association("lightsheet-lab", ("normal",))),
                          default_account="training", reservations=())
    workshop = {"profile": "workshop"}
    # Locked names hold even where Slurm lists no such reservation now (the course is later).
    assert charge(workshop, ["trainers"], trainer) == Charge("training", "workshop",
                                                             "course-2026-12")
    assert charge({**workshop, "qos": "workshop"}, ["trainers"], trainer).qos == "workshop"
    for key, value in (("qos", "normal"), ("account", "lightsheet-lab"), ("reservation", "")):
        with pytest.raises(InvalidRequest, match=f"{value!r}: Workshop sessions always use"):
            charge({**workshop, key: value}, ["trainers"], trainer)


def test_when_slurm_never_answered_only_the_profiles_and_the_sites_names_pass():
    unknown = SlurmAccess("alice")
    assert charge({"profile": "cpu"}, access=unknown) == Charge("imaging-facility", None, None)
    assert charge({"profile": "cpu", "account": "training", "qos": "workshop",
                   "reservation": "course-2026-12"}, access=unknown) == Charge(
        "training", "workshop", "course-2026-12")
    with pytest.raises(InvalidRequest, match="Slurm account 'lightsheet-lab' is not accepted "
                       "while Slurm does not say which are yours"):
        charge({"profile": "cpu", "account": "lightsheet-lab"}, access=unknown)


# ---- what a profile says about the account, QoS and reservation of its sessions ------------

def test_the_example_locks_the_workshops_names_and_leaves_the_others_to_users():
    assert SITE.profile("workshop").locked == ["account", "qos", "reservation"]
    assert SITE.profile("cpu").locked == []


def test_only_account_qos_and_reservation_can_be_locked():
    message = refusal(lambda data: data["profiles"][3].update(locked=["qos", "partition"]))
    assert ("profiles[3].locked[1]: 'partition' Input should be 'account', 'qos' or "
            "'reservation'") in message


def test_a_profile_name_missing_from_the_sites_list_names_that_list():
    message = refusal(lambda data: data["profiles"][0].update(account="elsewhere"))
    assert ("profiles[0].account: 'elsewhere' is not one of slurm.accounts "
            "['imaging-facility', 'training']") in message
    message = refusal(lambda data: data["profiles"][3].update(reservation="course-2027-01"))
    assert "profiles[3].reservation: 'course-2027-01' is not one of slurm.reservations" in message
