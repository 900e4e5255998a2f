//! Whatever the text of an extension file, adding and validating it returns problems,
//! never panics. Bounded for CI; `PROPTEST_CASES=20000 cargo test -p catalog --test props`
//! for a longer local run.

use catalog::CatalogBuilder;
use proptest::prelude::*;

/// Fragments of real catalog files, so generated text gets past the YAML parser often
/// and into validation.
const PIECES: &[&str] = &[
    "operations:\n",
    "categories:\n",
    "- key: ",
    "  - key: x.y\n",
    "    name: N\n",
    "    kind: trigger\n",
    "    kind: action\n",
    "    category: contacts\n",
    "    method: GET\n",
    "    method: POST\n",
    "    path: /contacts/{contactId}\n",
    "    path: /x/{a}/{b}\n",
    "    version: '2021-07-28'\n",
    "    scopes: [contacts.readonly]\n",
    "    token_kinds: [location]\n",
    "    params:\n",
    "      - name: contactId\n",
    "        in: path\n",
    "        in: query\n",
    "        in: body\n",
    "        type: string\n",
    "        type: enum\n",
    "        values: [a, b]\n",
    "        required: true\n",
    "    trigger:\n",
    "      items: $.contacts[*]\n",
    "      items: $..[\n",
    "      id: id\n",
    "      pagination:\n",
    "        style: page\n",
    "        style: cursor\n",
    "        page_param: page\n",
    "    action:\n",
    "      result: $.task\n",
    "  - name: contacts\n",
    "    title: Contacts\n",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "'",
    "\"",
    "&a ",
    "*a ",
    "!!str ",
    "\t",
    "\n",
    "   ",
    "~",
    "null",
    "123",
    "é",
];

fn fragmented() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let mut b = CatalogBuilder::default();
        b.add_source("ext.yaml", &text);
        let _ = b.build(false);
    }

    #[test]
    fn catalog_like_text_never_panics(text in fragmented()) {
        let mut b = CatalogBuilder::default();
        b.add_source("ext.yaml", &text);
        let _ = b.build(false);
    }
}

proptest! {
    // Each case validates the 126 built-ins too: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn extensions_next_to_the_builtins_never_panic(text in fragmented()) {
        let mut b = CatalogBuilder::default();
        b.add_builtin();
        b.add_source("ext.yaml", &text);
        let _ = b.build(false);
    }
}
