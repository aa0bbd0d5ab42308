"""References: parsing, normalisation, display round trip, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.errors import ReferenceError
from replicator.oci.reference import (
    DOCKER_HUB_REGISTRY,
    REPOSITORY_RE,
    TAG_RE,
    Reference,
    is_referrers_tag,
    normalise_host,
    parse_reference,
    parse_repository,
    referrers_tag,
    split_tags,
)

D256 = "sha256:" + "ab" * 32
D512 = "sha512:" + "cd" * 64


# --- examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "shown"),
    [
        ("alpine", DOCKER_HUB_REGISTRY, "library/alpine", None, None, "docker.io/library/alpine"),
        (
            "alpine:3",
            DOCKER_HUB_REGISTRY,
            "library/alpine",
            "3",
            None,
            "docker.io/library/alpine:3",
        ),
        ("user/app", DOCKER_HUB_REGISTRY, "user/app", None, None, "docker.io/user/app"),
        ("docker.io/x", DOCKER_HUB_REGISTRY, "library/x", None, None, "docker.io/library/x"),
        (
            "index.docker.io/x:v",
            DOCKER_HUB_REGISTRY,
            "library/x",
            "v",
            None,
            "docker.io/library/x:v",
        ),
        ("registry-1.docker.io/a/b", DOCKER_HUB_REGISTRY, "a/b", None, None, "docker.io/a/b"),
        ("localhost/foo", "localhost", "foo", None, None, "localhost/foo"),
        ("LocalHost:5000/foo", "localhost:5000", "foo", None, None, "localhost:5000/foo"),
        (
            "Reg.Example.COM/a/b/c:t",
            "reg.example.com",
            "a/b/c",
            "t",
            None,
            "reg.example.com/a/b/c:t",
        ),
        ("127.0.0.1:5000/net-monitor:v1", "127.0.0.1:5000", "net-monitor", "v1", None, None),
        ("[::1]:5000/foo", "[::1]:5000", "foo", None, None, "[::1]:5000/foo"),
        ("[FE80::1]/foo", "[fe80::1]", "foo", None, None, "[fe80::1]/foo"),
        (f"h.io/r@{D256}", "h.io", "r", None, D256, None),
        (f"h.io/r:t@{D512}", "h.io", "r", "t", D512, None),
        ("h.io/a__b/c-d/e..x", None, None, None, None, "invalid"),
        ("h.io/a__b/c---d/e.f_g", "h.io", "a__b/c---d/e.f_g", None, None, None),
        (
            "myhost:5000",
            DOCKER_HUB_REGISTRY,
            "library/myhost",
            "5000",
            None,
            "docker.io/library/myhost:5000",
        ),
        ("localhost:5000", None, None, None, None, "invalid"),
    ],
)
def test_parse_examples(
    text: str,
    registry: str | None,
    repository: str | None,
    tag: str | None,
    digest: str | None,
    shown: str | None,
) -> None:
    if shown == "invalid":
        with pytest.raises(ReferenceError):
            parse_reference(text)
        return
    ref = parse_reference(text)
    assert ref.scheme == "registry"
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert str(ref) == (shown or text)
    assert ref.location == registry
    assert parse_reference(str(ref)) == ref


def test_display_registry_and_reference_property() -> None:
    hub = parse_reference("alpine")
    assert hub.display_registry == "docker.io"
    assert hub.is_docker_hub
    assert hub.reference == "latest"
    assert parse_reference("h.io/r:v1").reference == "v1"
    assert parse_reference(f"h.io/r:v1@{D256}").reference == D256
    assert parse_reference("h.io/r").display_registry == "h.io"
    assert parse_reference("h.io/r:v1").repository_display == "h.io/r"


def test_with_tag_and_with_digest() -> None:
    ref = parse_reference(f"h.io/r:v1@{D256}")
    tagged = ref.with_tag("v2")
    assert (tagged.tag, tagged.digest) == ("v2", None)
    pinned = parse_reference("h.io/r:v1").with_digest(D256)
    assert (pinned.tag, pinned.digest, pinned.reference) == ("v1", D256, D256)
    with pytest.raises(ReferenceError):
        ref.with_tag("-bad")
    with pytest.raises(ReferenceError):
        ref.with_digest("sha256:1234")
    assert ref.without_tag_or_digest() == parse_reference("h.io/r")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Foo//bar", "repository name must be lowercase"),
        ("h.io/Foo", "repository name must be lowercase"),
        ("h.io/a//b", "empty path component"),
        ("h.io/a/", "empty path component"),
        ("/a", "empty path component"),
        ("h.io/", "names a registry but no repository"),
        ("h.io/-a", "invalid repository path component"),
        ("h.io/a-", "invalid repository path component"),
        ("h.io/a...b", "invalid repository path component"),
        ("h.io/a___b", "invalid repository path component"),
        ("h.io/r:", "empty tag"),
        ("h.io/r:.t", "invalid tag"),
        ("h.io/r:-t", "invalid tag"),
        ("h.io/r:t!", "invalid tag"),
        ("h.io/r:" + "t" * 129, "longer than 128"),
        ("h.io/r@", "empty digest"),
        ("h.io/r@sha256:abc", "invalid sha256 digest"),
        ("h.io/r@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("h.io/r@sha256:" + "A" * 64, "invalid sha256 digest"),
        ("h.io/r@x@y", "more than one '@'"),
        ("h.io/" + "a" * 256, "longer than 255"),
        ("ho_st.io/r", "invalid registry host"),
        ("h.io:99999/r", "invalid port"),
        ("h.io/r t", "whitespace"),
        ("https://h.io/r", "unsupported scheme"),
        ("ocidir://", "layout path is empty"),
        ("ocidir://:v1", "layout path is empty"),
        ("ocidir://out@sha256:12", "invalid sha256 digest"),
    ],
)
def test_malformed_references_raise_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ReferenceError) as info:
        parse_reference(text)
    assert fragment in str(info.value)
    assert str(info.value).startswith("invalid reference")


def test_error_message_hides_credentials() -> None:
    with pytest.raises(ReferenceError) as info:
        parse_reference("https://alice:s3cret@h.io/r")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ReferenceError) as info:
        parse_reference("alice:s3cret@h.io/r")
    assert "s3cret" not in str(info.value)


def test_error_message_is_clipped_and_printable() -> None:
    with pytest.raises(ReferenceError) as info:
        parse_reference("h.io/" + "A" * 5000 + "\x1b[31m")
    assert len(str(info.value)) < 400
    assert "\x1b" not in str(info.value)


# --- ocidir -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "tag", "digest", "shown"),
    [
        ("ocidir://out", "out", None, None, "ocidir://out"),
        ("ocidir://out:v1", "out", "v1", None, "ocidir://out:v1"),
        ("ocidir://./a/b/", "a/b", None, None, "ocidir://a/b"),
        ("ocidir:///abs/dir:v1", "/abs/dir", "v1", None, "ocidir:///abs/dir:v1"),
        (f"ocidir://out@{D256}", "out", None, D256, None),
        (f"ocidir://out:v1@{D256}", "out", "v1", D256, None),
        ("ocidir://a:b/c", "a:b/c", None, None, None),
        ("ocidir://dir:x/", "dir:x", None, None, "ocidir://dir:x/"),
        ("ocidir://dir:x/:v1", "dir:x", "v1", None, "ocidir://dir:x:v1"),
        ("ocidir://dir:!x", "dir:!x", None, None, None),
        ("ocidir://my@dir/x", "my@dir/x", None, None, None),
    ],
)
def test_ocidir_references(
    text: str, path: str, tag: str | None, digest: str | None, shown: str | None
) -> None:
    ref = parse_reference(text)
    assert ref.scheme == "ocidir"
    assert (ref.layout_path, ref.tag, ref.digest, ref.repository, ref.registry) == (
        path,
        tag,
        digest,
        "",
        "",
    )
    assert str(ref) == (shown or text)
    assert ref.location == f"ocidir://{path}"
    assert parse_reference(str(ref)) == ref


# --- repository, split_tags, host ---------------------------------------------------------


def test_parse_repository() -> None:
    ref = parse_repository("localhost:5000/net-monitor")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "localhost:5000",
        "net-monitor",
        None,
        None,
    )
    assert parse_repository("ocidir://out").layout_path == "out"
    with pytest.raises(ReferenceError, match="without a tag"):
        parse_repository("h.io/r:v1")
    with pytest.raises(ReferenceError, match="without a digest"):
        parse_repository(f"h.io/r@{D256}")


def test_split_tags() -> None:
    ref, tags = split_tags("h.io/repo:t1,t2,t1,t3")
    assert tags == ("t1", "t2", "t3")
    assert ref == parse_reference("h.io/repo:t1")
    ref, tags = split_tags("h.io/repo:t1")
    assert (ref.tag, tags) == ("t1", ("t1",))
    ref, tags = split_tags("localhost:5000/repo")
    assert (ref.tag, tags) == (None, ())
    ref, tags = split_tags("ocidir://out:a,b")
    assert (ref.layout_path, ref.tag, tags) == ("out", "a", ("a", "b"))
    with pytest.raises(ReferenceError, match="empty tag"):
        split_tags("h.io/repo:t1,,t2")
    with pytest.raises(ReferenceError, match="invalid tag"):
        split_tags("h.io/repo:t1,.bad")


def test_normalise_host() -> None:
    assert normalise_host("LocalHost:5000") == "localhost:5000"
    assert normalise_host("https://Reg.io/") == "reg.io"
    assert normalise_host("docker.io") == DOCKER_HUB_REGISTRY
    assert normalise_host("[::1]:443") == "[::1]:443"
    for bad in ("", "h.io/r", "u:p@h.io", "h_o", "h.io:0"):
        with pytest.raises(ReferenceError):
            normalise_host(bad)


# --- referrers tag --------------------------------------------------------------------------


def test_referrers_tag() -> None:
    assert referrers_tag(D256) == "sha256-" + "ab" * 32
    assert referrers_tag(D512) == "sha512-" + "cd" * 32
    long_alg = "a" * 40 + ":" + "0" * 70
    assert referrers_tag(long_alg) == "a" * 32 + "-" + "0" * 64
    assert referrers_tag("sha256+b64u:abc=") == "sha256-b64u-abc-"
    assert is_referrers_tag(referrers_tag(D256))
    assert is_referrers_tag(referrers_tag(D512))
    with pytest.raises(ReferenceError):
        referrers_tag("not a digest")


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("sha256-" + "0" * 64, True),
        ("sha512-" + "f" * 64, True),
        ("blake3-" + "f" * 64, True),
        ("sha256-" + "0" * 63, False),
        ("sha256-" + "G" * 64, False),
        ("release-1", False),
        ("v1", False),
        ("latest", False),
        ("a" * 33 + "-" + "0" * 64, False),
    ],
)
def test_is_referrers_tag(tag: str, expected: bool) -> None:
    assert is_referrers_tag(tag) is expected


# --- property based -------------------------------------------------------------------------

_alnum = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
_sep = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    _alnum,
    st.lists(st.tuples(_sep, _alnum), max_size=3),
)
_repository = (
    st.lists(_component, min_size=1, max_size=4).map("/".join).filter(lambda r: len(r) <= 255)
)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=2, max_size=3).map(".".join)
_port = st.integers(min_value=1, max_value=65535).map(lambda p: f":{p}")
_host = st.one_of(
    st.just("localhost"),
    st.builds(lambda p: "localhost" + p, _port),
    st.builds(lambda d, p: d + p, _domain, st.one_of(st.just(""), _port)),
    st.sampled_from(["[::1]", "[::1]:5000", "127.0.0.1:5000", "[2001:db8::7]:443"]),
).filter(lambda h: h not in ("docker.io", "index.docker.io", "registry-1.docker.io"))
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_hex = st.sampled_from("0123456789abcdef")
_digest = st.one_of(
    st.lists(_hex, min_size=64, max_size=64).map(lambda h: "sha256:" + "".join(h)),
    st.lists(_hex, min_size=128, max_size=128).map(lambda h: "sha512:" + "".join(h)),
)


@st.composite
def canonical_refs(draw: st.DrawFn) -> str:
    """A reference already in display form (explicit, lower-case, non Docker Hub host)."""
    text = f"{draw(_host)}/{draw(_repository)}"
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@st.composite
def any_valid_refs(draw: st.DrawFn) -> str:
    """Any valid reference: Docker Hub short forms and upper-case hosts included."""
    host: str = draw(
        st.one_of(
            st.just(""),
            st.sampled_from(["docker.io/", "index.docker.io/", "registry-1.docker.io/"]),
            _host.map(lambda h: h + "/"),
            _host.map(lambda h: h.upper() + "/"),
        )
    )
    repository = draw(_repository)
    if not host and "." in repository.split("/")[0]:
        # Without a host, a first component with a dot would itself be read as a
        # host (and alone, as a registry without a repository).
        first, slash, rest = repository.partition("/")
        repository = first.replace(".", "_") + slash + rest
    text = host + repository
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@settings(max_examples=200, deadline=None)
@given(canonical_refs())
def test_canonical_references_round_trip_exactly(text: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


@settings(max_examples=200, deadline=None)
@given(any_valid_refs())
def test_normalisation_is_idempotent(text: str) -> None:
    ref = parse_reference(text)
    once = str(ref)
    again = parse_reference(once)
    assert again == ref
    assert str(again) == once
    assert ref.registry == ref.registry.lower()
    if ref.registry == DOCKER_HUB_REGISTRY:
        assert once.startswith("docker.io/")
        assert "/" in ref.repository


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "-", ".", ":", "/", "x1"]), min_size=1, max_size=12).map(
        "".join
    ),
    st.one_of(st.none(), _tag),
)
def test_ocidir_round_trips(path: str, tag: str | None) -> None:
    text = "ocidir://" + path + (f":{tag}" if tag else "")
    try:
        ref = parse_reference(text)
    except ReferenceError:
        return
    assert parse_reference(str(ref)) == ref


def _uppercase(draw: st.DrawFn, base: str) -> str:
    repo = draw(_repository)
    i = draw(st.integers(min_value=0, max_value=len(repo) - 1))
    if repo[i].isalpha():
        return f"{base}/{repo[:i]}{repo[i].upper()}{repo[i + 1 :]}"
    return f"{base}/{repo}X"


@st.composite
def invalid_refs(draw: st.DrawFn) -> str:
    """A reference broken in exactly one, known way."""
    host = draw(_host)
    repo = draw(_repository)
    kind = draw(
        st.sampled_from(["upper", "empty", "tag", "digest", "long", "sep", "host", "longtag"])
    )
    if kind == "upper":
        return _uppercase(draw, host)
    if kind == "empty":
        parts = repo.split("/")
        i = draw(st.integers(min_value=0, max_value=len(parts)))
        parts.insert(i, "")
        return f"{host}/{'/'.join(parts)}"
    if kind == "tag":
        bad = draw(st.sampled_from([".x", "-x", "x!", "x y", "é", "x+y", ""]))
        return f"{host}/{repo}:{bad}"
    if kind == "digest":
        bad = draw(
            st.sampled_from(
                ["sha256:", "sha256:abc", "sha256:" + "g" * 64, "md5:" + "a" * 32, "x", ":"]
            )
        )
        return f"{host}/{repo}@{bad}"
    if kind == "long":
        return f"{host}/{repo}/" + "a" * 256
    if kind == "sep":
        bad = draw(st.sampled_from(["a-", "-a", "a..b", "a___b", "a.-b", "a_"]))
        return f"{host}/{repo}/{bad}"
    if kind == "longtag":
        return f"{host}/{repo}:" + "t" * 129
    bad_host = draw(st.sampled_from(["-h.io", "h_.io", "h.io:0", "h.io:70000", "[zz]:1"]))
    return f"{bad_host}/{repo}"


@settings(max_examples=250, deadline=None)
@given(invalid_refs())
def test_invalid_references_raise_reference_error(text: str) -> None:
    with pytest.raises(ReferenceError):
        parse_reference(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_never_raises_anything_else(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ReferenceError:
        return
    assert isinstance(ref, Reference)
    assert parse_reference(str(ref)) == ref


def test_exported_patterns_are_anchored() -> None:
    assert TAG_RE.match("v1") and not TAG_RE.match("v1!") and not TAG_RE.match("v1\n")
    assert not TAG_RE.search("bad tag")
    assert REPOSITORY_RE.match("a/b-c/d__e") and not REPOSITORY_RE.match("a//b")
    assert not REPOSITORY_RE.match("a/B")


# --- a registry without a repository -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000/<repository>:<tag>"),
        ("localhost:5000", "localhost:5000/<repository>:<tag>"),
        ("localhost", "localhost/<repository>:<tag>"),
        ("registry.example.com", "registry.example.com/<repository>:<tag>"),
        ("Registry.Example.com:443", "Registry.Example.com:443/<repository>:<tag>"),
        ("localhost:5000/", "localhost:5000/<repository>:<tag>"),
        ("[::1]:5000", "[::1]:5000/<repository>:<tag>"),
        ("docker.io", "docker.io/<repository>:<tag>"),
        ("registry.example.com:v1", "registry.example.com/<repository>:v1"),
        (f"127.0.0.1:5000@{D256}", f"127.0.0.1:5000/<repository>@{D256}"),
    ],
)
def test_a_registry_without_repository_gets_a_hint(text: str, hint: str) -> None:
    expected = f"names a registry but no repository: did you mean {hint}?"
    for parse in (parse_reference, parse_repository, lambda t: split_tags(t)[0]):
        with pytest.raises(ReferenceError) as info:
            parse(text)
        message = str(info.value)
        assert message.startswith('invalid reference "') and message.endswith(f'": {expected}')


def test_multi_tag_destination_naming_only_a_registry_keeps_its_tags_in_the_hint() -> None:
    with pytest.raises(ReferenceError, match=r"did you mean reg\.io/<repository>:a,b\?"):
        split_tags("reg.io:a,b")


@pytest.mark.parametrize("text", ["alpine", "alpine:3.19", "myhost:5000", "user/app.x:1.0"])
def test_docker_hub_short_names_are_not_taken_for_registries(text: str) -> None:
    assert parse_reference(text).registry == DOCKER_HUB_REGISTRY
