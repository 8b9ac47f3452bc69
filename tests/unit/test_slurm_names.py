"""Names that reach Slurm commands are whole-string matches: no trailing newline slips through."""

import pytest

from bioimage_gateway.slurm import check_job_id, check_username


@pytest.mark.parametrize("job_id", ["123\n", "12 3", "", "-1", "1;2", "1" * 13])
def test_a_job_id_is_digits_only(job_id):
    with pytest.raises(ValueError, match="is not a Slurm job id"):
        check_job_id(job_id)


@pytest.mark.parametrize("name", ["alice\n", "Alice", "root;id", "", "a" * 33, "-alice"])
def test_an_account_name_is_a_posix_name_and_nothing_more(name):
    with pytest.raises(ValueError, match="is not a valid POSIX account name"):
        check_username(name)


def test_ordinary_names_pass():
    assert check_job_id("4242") == "4242"
    assert check_username("alice") == "alice"
