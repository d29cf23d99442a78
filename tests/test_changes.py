"""The one Change shape: what a user reads, what apply needs, and the line a real run prints."""

from b2dkit.changes import Change, deferred


def test_a_change_reads_as_its_text_and_its_value_is_not_part_of_it():
    change = Change("memory 1024 → 2048 MB", "memory", 2048)
    assert str(change) == "memory 1024 → 2048 MB" and change.done == change.text
    assert change == Change("memory 1024 → 2048 MB", "memory", "another payload")  # same words, same change
    assert Change("create VM dev", "create", past="created VM dev").done == "created VM dev"


def test_a_deferred_change_says_when_it_takes_effect():
    later = deferred(Change("memory 512 → 768 MB", "memory"), "dev")
    assert later.text == "memory 512 → 768 MB (VM dev is running: takes effect at its next start)"
    assert later.kind == "memory"
