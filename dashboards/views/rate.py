"""Rate: claim the next item, rate it by keyboard, and get the next one.

The page only draws and forwards keys: the lease, the draft, the keys' meaning and the sending
are :mod:`evalkit.rating.annotate`'s. The desk is a fragment, so a key press reruns the desk
alone, not the page.
"""

import time

import streamlit as st

from dashboards.session import guard, store
from evalkit.errors import EvalkitError
from evalkit.rating.annotate import (
    KEYMAP,
    PAIR_KEYS,
    SKIP_REASONS,
    Outbox,
    Presses,
    claim,
    correction_diff,
    load_draft,
    progress,
    save_draft,
)
from evalkit.rating.rubric import LIKERT, load_rubric
from evalkit.store import StoreBusy

PAGE = "rate"
account = guard(PAGE)
rubric = st.cache_resource(load_rubric)()
state = st.session_state
state.setdefault("outbox", Outbox())
state.setdefault("presses", Presses())


def shown_ms() -> int:
    return int((time.monotonic() - state.shown_at) * 1000)


def on_key(key: str) -> None:
    """A key (or its button): change the draft, or queue the rating it sends."""
    draft = state.draft
    state.presses.note(key, draft, state.outbox)
    try:
        rating = draft.press(key, state.kind, rubric)
    except EvalkitError as exc:
        state.message = str(exc)
        return
    if rating is None:
        state.dirty = True
    else:
        state.outbox.put(draft.item_id, rating, shown_ms())


def on_edit(widget: str) -> None:
    state.draft.corrected = state[widget]
    state.dirty = True


def key_button(label: str, key: str, **options) -> None:
    st.button(label, key=f"key-{key}", shortcut=key, on_click=on_key, args=(key,), **options)


def draw_rubric(draft) -> None:
    upcoming = draft.next_dimension(rubric)
    for dimension in rubric.dimensions:
        given = draft.scores.get(dimension.name)
        marker = "→ " if dimension.name == upcoming else ""
        st.markdown(f"**{marker}{dimension.name}**: {dimension.question}")
        st.markdown(
            "\n".join(
                f"- {'**' if point == given else ''}{point} · {dimension.anchors[point]}"
                f"{' ✓**' if point == given else ''}"
                for point in LIKERT
            )
        )


def draw_item(item, draft) -> None:
    for message in item.prompt:
        with st.chat_message(message["role"]):
            st.write(message["content"])
    if item.kind == "pair":
        left, right = st.columns(2)
        for column, name, text in ((left, "A", item.response_a), (right, "B", item.response_b)):
            picked = " ✓" if draft.choice == PAIR_KEYS[name] else ""
            column.markdown(f"**Response {name}{picked}**")
            column.info(text)
    elif item.kind == "single":
        st.markdown("**Response**")
        st.info(item.response_a)
    else:
        widget = f"corrected-{item.item_id}"
        st.text_area(
            "Correct the response", value=draft.corrected, key=widget, height=160,
            on_change=on_edit, args=(widget,),
        )  # fmt: skip
        diff = correction_diff(item.response_a, draft.corrected or "")
        st.code(diff or "(no change yet)", language="diff")


def draw_keys(item, draft) -> None:
    if draft.skipping:
        st.markdown("**Skip: why?**")
        for n, reason in enumerate(SKIP_REASONS, 1):
            key_button(f"{n} · {reason}", str(n))
        key_button("Cancel", "Esc")
        return
    if item.kind == "single":
        columns = st.columns(len(LIKERT) + 1)
        for column, point in zip(columns, LIKERT):
            with column:
                key_button(str(point), str(point))
        with columns[-1]:
            key_button("Undo", "Backspace")
    elif item.kind == "pair":
        for column, (key, choice) in zip(st.columns(len(PAIR_KEYS)), PAIR_KEYS.items()):
            with column:
                key_button(f"{key} · {choice}", key)
    submit, skip = st.columns(2)
    with submit:
        key_button("Submit", "Enter", type="primary")
    with skip:
        key_button("Skip", "S")


@st.fragment
def desk() -> None:
    """The item and its keys; the keys pressed since the last run are settled first (their
    callbacks ran before this)."""
    state.draft, refusal = state.presses.settle(state.get("draft"), state.outbox, time.monotonic())
    if refusal:
        state.message = refusal
    try:
        draw_desk()
    finally:
        state.presses.drawn(time.monotonic())


def draw_desk() -> None:
    try:
        with store() as con:
            refusals = state.outbox.flush(con, account, rubric=rubric, page=PAGE)
            if state.pop("dirty", False):
                save_draft(con, account.name, state.draft)
            item = claim(con, account)
            new = item is None or getattr(state.get("draft"), "item_id", None) != item.item_id
            if item is not None and new:
                state.draft = load_draft(con, account.name, item)
                state.kind = item.kind
                state.shown_at = time.monotonic()
            if new or "progress" not in state:  # a score key leaves the counts as they were
                state.progress = progress(con, account.name)
            done = state.progress
    except StoreBusy as exc:
        kept = len(state.outbox.kept)
        st.warning(
            f"The store is busy: {exc.message}. {kept} rating(s) are kept in this session and "
            "sent as soon as it is free; nothing is lost."
        )
        st.button("Try again", key="retry")
        return
    except EvalkitError as exc:
        st.error(str(exc))
        return
    for refusal in refusals:
        st.warning(refusal)
    if "message" in state:
        st.error(state.pop("message"))
    today, left = st.columns(2)
    today.metric("Done today", done.done_today)
    left.metric("Left in the queue", done.left)
    if item is None:
        st.info(
            "Nothing left to rate for you: the queue is empty. Come back when items are queued."
        )
        return
    draft = state.draft
    main, side = st.columns([3, 2])
    with main:
        instructions = rubric.instructions.get(item.kind)
        if instructions:
            st.caption(instructions)
        draw_item(item, draft)
    with side:
        draw_keys(item, draft)
        if item.kind == "single":
            draw_rubric(draft)


st.title("Rate")
desk()
with st.expander("Keyboard", expanded=True):
    st.markdown(
        "\n".join(
            f"- `{key}` {what}"
            for group in ("single", "pair", "correction", "any")
            for key, what in KEYMAP[group]
        )
    )
