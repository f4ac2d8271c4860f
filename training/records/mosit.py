"""MosIT raw rows: ``<Image>caption</Image>`` tags in the turns matched to ``image_list`` /
``video_list`` / ``audio_list`` entries, by caption first and then by order."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from .common import _media_path, _req_str
from .report import _fail, _type_name
from .rows import _LIST_KEYS, _NAME_KEYS, MODALITIES, Conversation, MediaRef, OutputRequest, Turn
from .turns import _TAG_RE, _check_nonempty, _check_order, _remove_markers, _row_key


def _norm_caption(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def _parse_mosit(row: dict, conv_key: str, raw: list[dict], root: Path, check_files: bool,
                 fallback_key: str) -> Conversation:
    # 1. the media lists
    items: dict[str, list[tuple[str, str]]] = {}
    for mod in MODALITIES:
        lk = _LIST_KEYS[mod]
        value = row.get(lk, [])
        accepted = f'a list of {{"{_NAME_KEYS[mod]}", "caption"}} objects is required'
        if value is None:
            value = []
        if not isinstance(value, list):
            _fail(lk, f"is {_type_name(value)}", accepted, "wrong type")
        entries = []
        for k, item in enumerate(value):
            f = f"{lk}[{k}]"
            if isinstance(item, str):  # a bare file name
                item = {_NAME_KEYS[mod]: item}
            if not isinstance(item, dict):
                _fail(f, f"is {_type_name(item)}", accepted, "wrong type")
            nk = _NAME_KEYS[mod] if _NAME_KEYS[mod] in item else "name" if "name" in item else _NAME_KEYS[mod]
            name = _req_str(item, nk, f"{f}.{nk}", what="a non-empty file name")
            cap = item.get("caption", "")
            if cap is None:
                cap = ""
            if not isinstance(cap, str):
                _fail(f"{f}.caption", f"is {_type_name(cap)}", "a string is required", "wrong type")
            entries.append((name, cap.strip()))
        items[mod] = entries

    # 2. the placeholders in the turns, in conversation order
    tags: list[dict] = []  # {"turn", "mod", "text", "span"}
    for j, t in enumerate(raw):
        for m in _TAG_RE.finditer(t["value"]):
            mod = (m.group(1) or m.group(3)).lower()
            tags.append({"turn": j, "mod": mod, "text": (m.group(2) or "").strip(), "span": m.span(),
                         "item": None})

    # 3. match tags to list entries: exact caption first, then list order
    for mod in MODALITIES:
        mod_tags = [g for g in tags if g["mod"] == mod]
        used = [False] * len(items[mod])
        # unused entries per caption, in list order (one pass, not one per tag: rows may list thousands)
        by_caption: dict[str, deque[int]] = {}
        for k, (_, cap) in enumerate(items[mod]):
            if cap:
                by_caption.setdefault(_norm_caption(cap), deque()).append(k)
        for g in mod_tags:
            same = by_caption.get(_norm_caption(g["text"])) if g["text"] else None
            if same:
                g["item"] = same.popleft()
                used[g["item"]] = True
        free = (k for k in range(len(used)) if not used[k])  # lazy: sees the entries taken below
        for g in mod_tags:
            if g["item"] is None:
                k = next(free, None)
                if k is not None:
                    used[k] = True
                    g["item"] = k
        if mod_tags:
            for k, u in enumerate(used):
                if not u:
                    tag = f"<{mod.capitalize()}>"
                    _fail(f"{_LIST_KEYS[mod]}[{k}]", f"is not referenced by any {tag} tag in the conversation",
                          "each list entry must match one tag, by caption or else by order", "unmatched media")

    # 4. build the turns
    tags_of_turn: dict[int, list[dict]] = {}
    for g in tags:
        tags_of_turn.setdefault(g["turn"], []).append(g)
    turns = []
    for j, t in enumerate(raw):
        prefix = f"{conv_key}[{j}]"
        media_in: list[MediaRef] = []
        media_out: list[OutputRequest] = []
        for g in tags_of_turn.get(j, ()):
            mod, k = g["mod"], g["item"]
            tag = f"<{mod.capitalize()}>"
            if t["from"] == "human":
                if k is None:
                    _fail(f"{prefix}.value", f'has a {tag} tag but "{_LIST_KEYS[mod]}" has no entry left for it',
                          "each media in a human turn needs a list entry naming its file", "unmatched media")
                name = items[mod][k][0]
                media_in.append(MediaRef(mod, _media_path(root, name, f"{_LIST_KEYS[mod]}[{k}].{_NAME_KEYS[mod]}",
                                                          check_files)))
            else:
                name, cap = items[mod][k] if k is not None else (None, "")
                caption = cap or g["text"]
                if not caption:
                    _fail(f"{prefix}.value", f"has a {tag} tag with no caption and no list caption",
                          f'a caption in the tag or in "{_LIST_KEYS[mod]}" is required', "empty caption")
                media_out.append(OutputRequest(mod, caption, key=name))
        text, _ = _remove_markers(_TAG_RE, t["value"])
        turns.append([t["from"], text, media_in, media_out])

    # media listed but never tagged: attach to the first human turn (LLaVA-like)
    for mod in MODALITIES:
        if items[mod] and not any(g["mod"] == mod for g in tags):
            for k, (name, _) in enumerate(items[mod]):
                turns[0][2].append(MediaRef(mod, _media_path(
                    root, name, f"{_LIST_KEYS[mod]}[{k}].{_NAME_KEYS[mod]}", check_files)))

    _check_order([t[0] for t in turns], conv_key, "from")
    built = [Turn(r, x, tuple(i), tuple(o)) for r, x, i, o in turns]
    _check_nonempty(built, conv_key, "value")
    return Conversation(tuple(built), _row_key(row, fallback_key), "mosit")
