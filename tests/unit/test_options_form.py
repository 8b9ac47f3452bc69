"""What the spawn form offers to charge a session to: the user's own accounts, the QoS of the
preselected account, the reservations open to them; nothing of other users'."""

from __future__ import annotations

from importlib import resources

from charging import FormChoices

from bioimage_gateway.hub_config.cluster_info import Snapshot
from bioimage_gateway.hub_config.form import render_options_form
from bioimage_gateway.session_request import (ActiveReservation, Association, SlurmAccess,
                                              allowed_profiles, effective_limits)
from bioimage_gateway.settings import load_settings

SITE = load_settings(
    str(resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml"))
)
ALICE = SlurmAccess(
    "alice",
    associations=(Association("imaging-facility", ("normal",)),
                  Association("lightsheet-lab", ("normal", "long"), default_qos="long")),
    default_account="imaging-facility",
    reservations=(ActiveReservation("bob-only", users=frozenset({"bob"})),
                  ActiveReservation("lab-course", accounts=frozenset({"lightsheet-lab"}),
                                    end="</script><b>late"),
                  ActiveReservation("alice-demo", users=frozenset({"alice"}), end="noon")),
)


def form(groups, access=ALICE) -> str:
    return render_options_form(allowed_profiles(SITE, groups), effective_limits(SITE, groups),
                               Snapshot(access=access))


def test_the_form_offers_the_users_accounts_with_the_profiles_default_chosen():
    text = form(["imaging"])
    selects = FormChoices(text).options
    assert selects["account"] == [("imaging-facility", True), ("lightsheet-lab", False)]
    # The QoS of the preselected account; no default QoS: Slurm's default is offered first.
    assert selects["qos"] == [("", True), ("normal", False)]
    assert selects["reservation"] == [("", True), ("alice-demo", False)]
    assert "Active reservation open to you: <strong>alice-demo</strong>" in text
    # Open with her project account: listed for it (the form switches lists per account).
    assert "Active reservation open to you: <strong>lab-course</strong>" in text
    assert "bob-only" not in text
    assert "training" not in text.split("<script>")[0]


def test_names_from_slurm_cannot_break_out_of_the_forms_script():
    text = form(["imaging"])
    assert "</script><b>" not in text
    assert text.count("</script>") == 1


def test_without_slurm_the_form_offers_only_the_profiles_names_and_slurms_defaults():
    # The site's lists name other people's accounts: accepted from the API, not offered.
    text = form(["imaging"], SlurmAccess("alice"))
    selects = FormChoices(text).options
    assert selects["account"] == [("imaging-facility", True)]
    assert selects["qos"] == [("", True)] and selects["reservation"] == [("", True)]
    assert "training" not in text and "course-2026-12" not in text
    # The trainers' workshop profile locks its own names: those are shown.
    selects = FormChoices(form(["trainers"], SlurmAccess("tom"))).options
    assert selects["account"] == [("training", True)]
    assert selects["qos"] == [("workshop", True)]
    assert selects["reservation"] == [("course-2026-12", True)]


def test_a_locked_account_the_user_lacks_is_shown_as_the_profile_fixes_it():
    participant = SlurmAccess("pat", (Association("lightsheet-lab", ("normal",)),),
                              default_account="lightsheet-lab", reservations=())
    selects = FormChoices(form(["workshop-participants"], participant)).options
    # Locked: shown alone and fixed (Slurm is the judge of whether pat may use it).
    assert selects["account"] == [("training", True)]
    assert selects["qos"] == [("workshop", True)]
