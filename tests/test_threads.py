"""Thread rebuilding: ancestor order, deleted texts, missing parents, pseudonyms."""

from __future__ import annotations

from reddit_amazon.linking import extract_asins
from reddit_amazon.schema import DELETED_TEXT, REMOVED_TEXT, Conversation
from reddit_amazon.threads import (
    Pseudonymizer,
    RebuildCounts,
    ThreadIndex,
    comment_from_dump,
    comment_problems,
    submission_from_dump,
    submission_problems,
    submission_text,
)


def _comment(cid, parent, body, author="someone", link="s1", created=None):
    return comment_from_dump(
        {"id": cid, "link_id": f"t3_{link}", "parent_id": parent, "body": body, "author": author,
         "created_utc": created, "subreddit": "sub"}
    )


def _index(*records):
    index = ThreadIndex()
    index.add_all(records)
    return index


SUBMISSION = submission_from_dump(
    {"id": "t3_s1", "title": "Need a razor", "selftext": "", "author": "alice", "created_utc": "1600000000",
     "subreddit": "wicked_edge"}
)


def test_submission_text_matches_the_release_format():
    assert submission_text(SUBMISSION) == "Need a razor "
    with_body = submission_from_dump({"id": "s2", "title": "T", "selftext": "Body here"})
    assert submission_text(with_body) == "T Body here"
    removed = submission_from_dump({"id": "s3", "title": "T", "selftext": "[removed]"})
    assert submission_text(removed) == f"T {REMOVED_TEXT}"
    assert submission_from_dump({"id": "s4"}) is None


def test_comment_fields_as_dumps_have_them():
    comment = comment_from_dump({"id": "t1_c1", "link_id": "t3_s1", "parent_id": "s1", "body": "x", "created_utc": "7"})
    assert (comment.id, comment.link_id, comment.parent_id, comment.created_utc) == ("c1", "s1", "t3_s1", 7)
    unprefixed_parent = comment_from_dump({"id": "c2", "link_id": "s1", "parent_id": "c1", "body": "y"})
    assert unprefixed_parent.parent_id == "t1_c1"
    assert comment_from_dump({"id": "c3", "link_id": "t3_s1", "body": "no parent"}) is None
    assert comment_from_dump({"id": "c4", "link_id": "t3_s1", "parent_id": "t3_s1", "body": None}) is None


def test_chain_oldest_first_with_marked_deleted_texts_and_context_items():
    top = _comment("c1", "t3_s1", "I use https://www.amazon.com/dp/B000NL0T1G", author="bob", created=1)
    deleted = _comment("c2", "t1_c1", "[deleted]", author="[deleted]", created=2)
    removed = _comment("c3", "t1_c2", "[removed]", author="carol", created=3)
    recommendation = _comment("c4", "t1_c3", "Get amazon.co.uk/dp/B00AGG3MZ8", author="dave", created=4)
    other_thread = _comment("x1", "t3_s9", "unrelated", link="s9")
    index = _index(SUBMISSION, top, deleted, removed, recommendation, other_thread)
    counts = RebuildCounts()
    pseudonym = Pseudonymizer("pepper")
    conversation = index.conversation(recommendation, ["B00AGG3MZ8"], pseudonym, extract_asins, counts)
    assert [t.id for t in conversation.turns] == ["s1", "c1", "c2", "c3"]
    assert [t.text for t in conversation.turns] == [
        "Need a razor ",
        "I use https://www.amazon.com/dp/B000NL0T1G",
        DELETED_TEXT,
        REMOVED_TEXT,
    ]
    assert conversation.turns[2].author == ""  # deleted author: no pseudonym
    assert conversation.turns[1].author == pseudonym("bob") != pseudonym("carol")
    assert conversation.context_items == ["B000NL0T1G"]
    assert (conversation.example_id, conversation.gt_comment_id, conversation.thread_id) == ("c4", "c4", "s1")
    assert conversation.created_utc == 4 and conversation.domain == ""
    assert counts.ancestors_deleted_or_removed == 2 and counts.conversations == 1
    row = conversation.to_row()
    assert Conversation.from_row(row, require_domain=False).turns == conversation.turns
    assert "bob" not in str(row) and "carol" not in str(row) and "alice" not in str(row)


def test_missing_ancestor_and_missing_submission_are_counted():
    orphan = _comment("c9", "t1_gone", "https://www.amazon.com/dp/B000NL0T1G")
    no_submission = _comment("c8", "t3_s7", "https://www.amazon.com/dp/B000NL0T1G", link="s7")
    index = _index(SUBMISSION, orphan, no_submission)
    counts = RebuildCounts()
    pseudonym = Pseudonymizer("pepper")
    assert index.conversation(orphan, ["B000NL0T1G"], pseudonym, extract_asins, counts) is None
    assert index.conversation(no_submission, ["B000NL0T1G"], pseudonym, extract_asins, counts) is None
    assert (counts.ancestor_missing, counts.submission_missing, counts.conversations) == (1, 1, 0)


def test_parent_cycle_is_a_broken_chain_not_a_hang():
    a = _comment("a", "t1_b", "x")
    b = _comment("b", "t1_a", "y")
    recommendation = _comment("r", "t1_a", "https://www.amazon.com/dp/B000NL0T1G")
    counts = RebuildCounts()
    index = _index(SUBMISSION, a, b, recommendation)
    assert index.conversation(recommendation, ["B000NL0T1G"], Pseudonymizer("s"), extract_asins, counts) is None
    assert counts.broken_parent_chain == 1


def test_an_ancestor_of_another_thread_or_a_chain_ending_elsewhere_is_a_broken_chain():
    """A parent from thread s2 must not splice s2's turns (and its links, as context items) into s1."""
    other = submission_from_dump({"id": "s2", "title": "Another thread"})
    foreign_parent = _comment("p", "t3_s2", "thread two https://www.amazon.com/dp/B000NL0T1K", link="s2")
    under_foreign = _comment("c", "t1_p", "https://www.amazon.com/dp/B000NL0T1G")
    top_of_other = _comment("d", "t3_s2", "https://www.amazon.com/dp/B000NL0T1G")  # link_id s1, parent s2
    counts = RebuildCounts()
    index = _index(SUBMISSION, other, foreign_parent, under_foreign, top_of_other)
    for comment in (under_foreign, top_of_other):
        assert index.conversation(comment, ["B000NL0T1G"], Pseudonymizer("s"), extract_asins, counts) is None
    assert counts.broken_parent_chain == 2 and counts.conversations == 0


def test_duplicate_records_keep_the_surviving_text():
    deleted_copy = _comment("c1", "t3_s1", "[deleted]")
    live_copy = _comment("c1", "t3_s1", "the real text")
    index = _index(deleted_copy, live_copy, _comment("c1", "t3_s1", "[removed]"))
    assert index.comments["c1"].body == "the real text" and index.duplicates == 2


def test_pseudonyms_depend_on_the_salt_and_hide_the_name():
    first, second = Pseudonymizer("salt-a"), Pseudonymizer("salt-b")
    assert first("Alice") == first("Alice") != second("Alice")
    assert first("Alice") == first("alice") != first("Alice2")  # Reddit names are unique regardless of case
    assert "Alice" not in first("Alice") and first("Alice").startswith("u_")
    assert first("[deleted]") == first("") == ""


def test_user_names_in_mentions_and_profile_subreddits_are_pseudonymised():
    """Real texts mention users (`As /u/HereForTheEdge says` in the authors' release) and profile
    posts sit in the pseudo-subreddit `u_<name>`: the name must not reach the output there either."""
    submission = submission_from_dump(
        {"id": "s1", "title": "My coat haul, thanks u/Sec\\_ret", "selftext": "", "author": "Sec_ret",
         "created_utc": 1, "subreddit": "u_Sec_ret"})
    question = _comment("c1", "t3_s1", "As /u/Sec_ret says, see reddit.com/user/Sec_ret/ (not amazon.com/gp/u/xyz1)",
                        author="other")
    answer = _comment("c2", "t1_c1", "https://www.amazon.com/dp/B000NL0T1G ping u/other and /u/Sec_ret", author="Sec_ret")
    answer.subreddit = ""
    pseudonym = Pseudonymizer("pepper")
    conversation = _index(submission, question, answer).conversation(
        answer, ["B000NL0T1G"], pseudonym, extract_asins, RebuildCounts())
    row = str(conversation.to_row())
    assert "Sec" not in row and "other" not in row.replace("another", "")
    hashed = pseudonym("Sec_ret").removeprefix("u_")
    assert conversation.subreddit == pseudonym("Sec_ret")
    assert conversation.turns[0].text == f"My coat haul, thanks u/{hashed} "
    assert conversation.turns[1].text == (f"As /u/{hashed} says, see reddit.com/user/{hashed}/ "
                                          "(not amazon.com/gp/u/xyz1)")
    assert conversation.gt_text.endswith(f"ping u/{pseudonym('other').removeprefix('u_')} and /u/{hashed}")
    assert pseudonym.subreddit("MakeupAddiction") == "MakeupAddiction"
    # One account whatever the case: a mention typed in another case points at the same turns.
    assert pseudonym.text("u/SEC_RET and u/sec_ret") == f"u/{hashed} and u/{hashed}"
    assert pseudonym.subreddit("u_sec_RET") == pseudonym("Sec_ret")
    for text in ("thanks _u/Sec_ret_ here", "谢谢u/Sec_ret", "u/Sec_ret谢谢", "see /user/Sec_ret/ too"):
        assert "Sec" not in pseudonym.text(text), text
    # Profile subreddits, JSON-escaped and percent-encoded slashes, message links: the name must not survive.
    forms = ["ask r/u_Sec_ret", "see /r/u_Sec_ret", "https://www.reddit.com/r/u_Sec_ret/comments/abc/",
             "reddit.com\\/user\\/Sec_ret", "\\/u\\/Sec_ret", "https%3A%2F%2Fwww.reddit.com%2Fuser%2FSec_ret",
             "https://www.reddit.com/message/compose/?to=Sec_ret", "U/Sec_ret", "Thanks...u/Sec_ret",
             "thanks.u/Sec_ret", "ask-u/Sec_ret", "Thanks...r/u_Sec_ret", "https://reddit.com/U/Sec_ret",
             "reddit.com/User/Sec_ret", "message/compose?to=u%2FSec_ret", "u/**Sec_ret**"]
    for text in forms:
        assert "Sec" not in pseudonym.text(text) and hashed in pseudonym.text(text), text
    for prose in ("run it as user/password auth", "https://example.com/u/abcdef", "amazon.com/gp/u/xyz1"):
        assert pseudonym.text(prose) == prose  # not a Reddit mention


def test_a_refused_record_says_which_field_is_missing_or_of_the_wrong_type():
    good = {"id": "c1", "link_id": "t3_s1", "parent_id": "t3_s1", "body": "hi"}
    cases = {
        "`body` is a number, not a string": {**good, "body": 5},
        "`body` is null, not a string": {**good, "body": None},
        "`link_id` is missing": {k: v for k, v in good.items() if k != "link_id"},
        "`id` is an array, not a string; `parent_id` is empty": {**good, "id": ["c1"], "parent_id": ""},
        "`id` is empty": {**good, "id": ""},
        "": {**good, "body": "", "created_utc": [1]},  # kept: an empty body, a time it cannot read (None)
    }
    for why, record in cases.items():
        assert comment_problems(record) == why
        assert (comment_from_dump(record) is None) == bool(why)  # the same rules as the reader
    submissions = {"`title` is an object, not a string": {"id": "s1", "title": {}},
                   "`id` is a boolean, not a string": {"id": True, "title": "x"}, "": {"id": "s1", "title": ""}}
    for why, record in submissions.items():
        assert submission_problems(record) == why
        assert (submission_from_dump(record) is None) == bool(why)
