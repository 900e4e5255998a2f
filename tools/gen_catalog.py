#!/usr/bin/env python3
"""Regenerates catalog/*.yaml from the reference map and the official specs in ../shared.

The catalog is ours and is committed; this script only exists so that a refresh of the
official specs can be folded in with a reviewable diff. Run from the repository root:
    python3 tools/gen_catalog.py
"""
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "ghl-api")
OUT = os.path.join(ROOT, "catalog")

CATEGORY_FILES = {
    "Contacts": "contacts",
    "Calendars & Appointments": "calendars",
    "Opportunities": "opportunities",
    "Users": "users",
    "Conversations & Messages": "conversations",
    "Businesses": "businesses",
    "Workflows": "workflows",
    "Campaigns": "campaigns",
    "Snapshots": "snapshots",
    "Locations": "locations",
    "Custom Fields": "custom_fields",
    "Companies": "companies",
    "Associations & Relations": "associations",
    "Blogs": "blogs",
}

SPECS = {}


def spec(name):
    if name not in SPECS:
        with open(os.path.join(SHARED, "openapi", name)) as f:
            SPECS[name] = json.load(f)
    return SPECS[name]


def resolve(doc, schema, depth=0):
    while isinstance(schema, dict) and "$ref" in schema and depth < 20:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            return {}
        node = doc
        for part in ref[2:].split("/"):
            node = node.get(part, {})
        schema = node
        depth += 1
    if isinstance(schema, dict) and "allOf" in schema:
        merged = {"type": "object", "properties": {}, "required": []}
        for sub in schema["allOf"]:
            sub = resolve(doc, sub, depth + 1)
            merged["properties"].update(sub.get("properties", {}))
            merged["required"] += sub.get("required", [])
        return merged
    return schema or {}


def type_of(doc, schema):
    schema = resolve(doc, schema)
    t = schema.get("type")
    if t in ("string", "integer", "number", "boolean", "array", "object"):
        return t
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    if "enum" in schema:
        return "string"
    return "any"


def clean(text):
    if not text:
        return None
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text[:300] if text else None


def param(doc, name, location, schema, required, description, example=None):
    schema = resolve(doc, schema or {})
    p = {"name": name, "in": location, "type": type_of(doc, schema)}
    if required:
        p["required"] = True
    if p["type"] == "array":
        items = resolve(doc, schema.get("items", {}))
        it = type_of(doc, items)
        if it != "any":
            p["items"] = it
        if items.get("enum"):
            p["enum"] = [e for e in items["enum"] if e is not None]
    if schema.get("enum"):
        p["enum"] = [e for e in schema["enum"] if e is not None]
    desc = clean(description or schema.get("description"))
    if desc:
        p["description"] = desc
    ex = example if example is not None else schema.get("example")
    if ex is not None and not isinstance(ex, (dict, list)) or isinstance(ex, list) and len(json.dumps(ex)) < 120:
        p["example"] = ex
    if "default" in schema and not isinstance(schema["default"], (dict, list)):
        p["default"] = schema["default"]
    return p


def params_for(op):
    doc = spec(op["spec_file"])
    sop = doc["paths"][op["path"]][op["method"].lower()]
    out = []
    seen = set()
    for raw in sop.get("parameters", []):
        raw = resolve(doc, raw)
        if raw.get("in") == "header":
            continue
        name = raw["name"]
        if (name, raw["in"]) in seen:
            continue
        seen.add((name, raw["in"]))
        out.append(param(doc, name, raw["in"], raw.get("schema"), raw.get("required") or raw["in"] == "path",
                         raw.get("description"), raw.get("example")))
    declared = {p["name"] for p in out if p["in"] == "path"}
    for name in re.findall(r"\{(\w+)\}", op["path"]):
        if name not in declared:
            p = {"name": name, "in": "path", "type": "string", "required": True,
                 "description": "Not declared by the official spec; present in its path template."}
            values = (op.get("path_param_values") or {}).get(name)
            if values:
                p["enum"] = values
            out.append(p)
    body = sop.get("requestBody", {}).get("content", {})
    ctype = next(iter(body), None)
    if ctype:
        schema = resolve(doc, body[ctype].get("schema", {}))
        if schema.get("type") == "array":
            # The body is a bare JSON array: one parameter stands for it (see `body_root`).
            element = resolve(doc, schema.get("items", {}))
            fields = ", ".join(element.get("properties", {}))
            out.append({"name": "items", "in": "body", "type": "array", "items": type_of(doc, element),
                        "required": True, "description": f"The request body: a list of objects ({fields})"})
            return out, ctype, "items"
        required = set(schema.get("required", []))
        for name, prop in (schema.get("properties") or {}).items():
            out.append(param(doc, name, "body", prop, name in required, prop.get("description")))
    return out, ctype, None


def pagination(op):
    p = op.get("pagination") or {}
    style = p.get("style")
    loc = p.get("location", "query")
    lim = p.get("default_limit")
    lim = int(lim) if lim is not None else None
    if style == "single_record":
        return {"style": "single_record"}
    if style == "single_file":
        return {"style": "single_file"}
    if style == "none":
        return {"style": "none"}
    if style in ("offset_skip_limit", "offset_limit_offset"):
        out = {"style": "offset", "in": loc, "offset_param": "skip" if style == "offset_skip_limit" else "offset",
               "limit_param": "limit", "limit": lim or p.get("max_limit") or 20}
        if p.get("max_limit"):
            out["max_limit"] = p["max_limit"]
        if "hasMore" in p.get("next_page", ""):
            out["has_more"] = "$.hasMore"
        return out
    if style == "cursor_startAfter_startAfterId":
        return {"style": "cursor", "in": loc, "limit_param": "limit", "limit": lim or 20,
                "max_limit": p.get("max_limit", 100),
                "cursor": {"startAfter": "$.meta.startAfter", "startAfterId": "$.meta.startAfterId"}}
    if style == "cursor_lastMessageId":
        return {"style": "cursor", "in": loc, "limit_param": "limit", "limit": lim or 20,
                "cursor": {"lastMessageId": "$.lastMessageId"}, "has_more": "$.nextPage"}
    if style == "cursor_startAfterDate":
        return {"style": "last_item", "in": loc, "param": "startAfterDate", "field": "lastMessageDate",
                "limit_param": "limit", "limit": lim or 20}
    if style == "body_page_or_searchAfter":
        return {"style": "page", "in": "body", "page_param": "page", "limit_param": "pageLimit", "limit": 100}
    if style == "time_window":
        start, end = p["params"]
        out = {"style": "time_window", "start_param": start, "end_param": end, "unit": "epoch_ms"}
        if "31 days" in p.get("next_page", ""):
            out["max_span_days"] = 31
        else:
            out["max_span_days"] = 31
        return out
    raise SystemExit(f"unknown pagination style {style} in {op['key']}")


def trigger_block(op):
    idf = op.get("item_id_field")
    if idf is None:
        ident = "content_hash"
    elif idf == "<value>":
        ident = "item_value"
    elif idf.startswith("<"):
        ident = {"param": idf.strip("<>").split()[0]}
    else:
        ident = {"field": idf}
    pag = pagination(op)
    upd = op.get("item_updated_field")
    if pag["style"] in ("single_record",):
        dedupe = "updated" if upd else "changed"
    elif pag["style"] == "single_file":
        dedupe = "new"
    else:
        dedupe = "updated" if upd else "new"
    items = op.get("response_items_path") or "$"
    if items == "$" and pag["style"] not in ("single_record", "single_file"):
        # List endpoints whose spec declares a single object (associations): the list is a bare array.
        items = "$[*]"
    t = {"items": items, "id": ident}
    if upd:
        t["updated"] = upd
    if op.get("item_created_field"):
        t["created"] = op["item_created_field"]
    t["dedupe"] = dedupe
    t["shape"] = {"single": "single", "list": "list", "map_by_date": "list"}.get(op.get("response_shape"), "single" if pag["style"] in ("single_record", "single_file") else "list")
    t["pagination"] = pag
    fields = op.get("item_fields")
    if fields:
        t["fields"] = fields
    return t


def action_block(op):
    keys = op.get("response_top_level_keys") or []
    if len(keys) == 1 and op.get("response_type") == "object":
        result = f"$.{keys[0]}"
    else:
        result = "$"
    a = {"result": result}
    if keys:
        a["response_keys"] = keys
    return a


# Reviewed amendments where the official spec is silent (see operations-notes.md, items 8 and 9).
SEARCH_CONTACTS_BODY = [
    {"name": "locationId", "in": "body", "type": "string", "required": True, "description": "Location Id"},
    {"name": "query", "in": "body", "type": "string", "description": "Free-text search over name, email, phone"},
    {"name": "filters", "in": "body", "type": "array", "items": "object",
     "description": "Filter groups: {field, operator, value} (undeclared in the spec)"},
    {"name": "sort", "in": "body", "type": "array", "items": "object", "description": "Sort: [{field, direction}]"},
    {"name": "page", "in": "body", "type": "integer", "description": "Page number, from 1"},
    {"name": "pageLimit", "in": "body", "type": "integer", "description": "Page size (max 500)"},
    {"name": "searchAfter", "in": "body", "type": "array", "description": "Cursor: the searchAfter of the last record"},
]
# File downloads whose spec gives no response media type (operations-notes.md, item 14).
DOWNLOAD_TYPES = {"conversations.get_message_recording": "audio/x-wav", "conversations.download_transcription": "text/plain"}
FIELDS_FROM = {"contacts.search_contacts": "contacts.get_contact", "contacts.get_duplicate_contact": "contacts.get_contact"}


def entry(op):
    params, ctype, body_root = params_for(op)
    if op["key"] == "contacts.search_contacts" and not params:
        params = SEARCH_CONTACTS_BODY
    name = op.get("seed_name") or op.get("proposed_name")
    desc = op.get("seed_description") or op.get("proposed_description")
    e = {
        "key": op["key"],
        "name": name,
        "description": desc,
        "kind": op["kind"],
        "category": op["category"],
        "method": op["method"],
        "path": op["path"],
        "version": op["version_header"] or "2021-04-15",
        "scopes": op.get("effective_scopes") or [],
        "tokens": [t.replace("sub-account", "location") for t in (op.get("token_types") or ["sub-account"])],
    }
    if op.get("deprecated"):
        e["deprecated"] = True
    if ctype and ctype != "application/json":
        e["content_type"] = ctype
    rc = op.get("response_content_type") or DOWNLOAD_TYPES.get(op["key"])
    if rc and rc != "application/json":
        e["response_type"] = rc
    e["params"] = params
    if body_root:
        e["body_root"] = body_root
    if op["kind"] == "trigger":
        e["trigger"] = trigger_block(op)
    else:
        e["action"] = action_block(op)
    note = clean(op.get("notes"))
    if note:
        e["notes"] = note
    return e


class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def _str(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


def _list(dumper, data):
    flow = all(isinstance(x, (str, int, float, bool)) for x in data) and len(data) > 0
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


Dumper.add_representer(str, _str)
Dumper.add_representer(list, _list)


def main():
    with open(os.path.join(SHARED, "operations.yaml")) as f:
        ops = yaml.safe_load(f)["operations"]
    by_key = {op["key"]: op for op in ops}
    for key, src in FIELDS_FROM.items():
        by_key[key].setdefault("item_fields", by_key[src]["item_fields"])
    by_file = {}
    for op in ops:
        by_file.setdefault(CATEGORY_FILES[op["category"]], []).append(entry(op))
    os.makedirs(OUT, exist_ok=True)
    for fname, entries in by_file.items():
        body = yaml.dump({"operations": entries}, Dumper=Dumper, sort_keys=False, width=120, allow_unicode=True)
        with open(os.path.join(OUT, fname + ".yaml"), "w") as f:
            f.write(f"# {entries[0]['category']}: GHL v2 operations (generated by tools/gen_catalog.py, then reviewed)\n")
            f.write(body)
    print(f"wrote {sum(len(v) for v in by_file.values())} operations in {len(by_file)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
