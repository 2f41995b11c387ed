"""Content credentials (C2PA): a signed manifest in every PNG, GIF and MP4 saying it is machine-made.

The manifest holds a ``c2pa.created`` action (digital source type: trained algorithmic media),
the software and its version, the models and the recipe. It is signed by the user's own
certificate or, by default, by a local identity made on first use in the cache folder: a root
CA and a long-lived leaf certificate issued by it (c2pa refuses a self-signed CA leaf). The CA's
key is dropped once the leaf is issued, so nothing else can ever be signed under that root.

Signing is the last write of a file: the signed copy replaces the temporary file inside
``state.atomic_path``, so a kill leaves the old file or the new signed one. Verification is
offline (no remote manifest, no OCSP). ``content_bytes`` gives a file without its manifest, so
two runs of one recipe compare equal although each signature is unique.

c2pa-python has no wheel for some platforms (Windows at 0.38); there the files are written
unsigned, with their recipe, and one notice says why.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CredentialError",
    "LOCAL",
    "Signing",
    "Verdict",
    "content_bytes",
    "local_identity",
    "sign_file",
    "signing_for",
    "summary",
    "unavailable",
    "verify",
]

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
RECIPE_LABEL = "org.vqclip.recipe"
MIME_TYPES = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}
CREDENTIALS_DIR = "credentials"
SIGNER_FILE = "local-signer.pem"  # leaf certificate, CA certificate, leaf key (mode 0600)
CA_FILE = "local-ca.pem"  # the local root alone: what `vqclip verify --trust-anchor` takes
_OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


class CredentialError(ValueError):
    """Signing could not be set up or done; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Signing:
    """Who signs: the user's certificate chain and key (PEM files), or with both None the
    local identity in the cache folder; an optional RFC 3161 timestamp authority URL."""

    cert: str | None = None
    key: str | None = None
    timestamp_url: str | None = None


LOCAL = Signing()


def signing_for(config: Any) -> Signing | None:
    """The Signing a RunConfig asks for: None with --no-credentials."""
    if not getattr(config, "credentials", True):
        return None
    fields = ("signing_cert", "signing_key", "timestamp_url")
    return Signing(*(getattr(config, name, None) for name in fields))


# --- availability ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def unavailable() -> str | None:
    """Why content credentials cannot be made here (None when they can)."""
    try:
        import c2pa  # noqa: F401
        import cryptography  # noqa: F401
    except (ImportError, OSError) as error:  # OSError: a wheel whose native library fails
        return (
            f"c2pa-python cannot be imported here ({type(error).__name__}: {error}); it has no "
            "wheel for every platform (none for Windows at 0.38)"
        )
    return None


_noticed = False


def _notice_off(reason: str) -> None:
    global _noticed  # one line per process, not one per snapshot
    if _noticed:
        return
    _noticed = True
    warnings.warn(
        f"content credentials are off: {reason}. Files still carry their recipe. "
        "Install c2pa-python on Linux or macOS to sign them, or pass --no-credentials.",
        stacklevel=3,
    )


# --- the local identity ---------------------------------------------------------------------


def credentials_dir() -> Path:
    """CACHE/credentials, where the local identity lives: the folder hub.cache_dir names
    ($VQCLIP_CACHE, else ~/.cache/vqclip), found without importing hub (and torch)."""
    root = os.environ.get("VQCLIP_CACHE")
    cache = Path(root).expanduser() if root else Path.home() / ".cache" / "vqclip"
    return cache.resolve() / CREDENTIALS_DIR


def local_identity(folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(signer bundle, CA certificate) of the local identity, made on first use in
    ``folder`` (default: CACHE/credentials). The first process to make it wins a race."""
    folder = Path(folder) if folder is not None else credentials_dir()
    bundle, ca = folder / SIGNER_FILE, folder / CA_FILE
    if not bundle.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CredentialError(
                f"Cannot create the folder {folder} for the local signing identity ({error}). "
                "Set VQCLIP_CACHE to a folder you can write to, or pass --no-credentials."
            ) from None
        leaf, ca_cert, key = _make_identity()
        fd, name = tempfile.mkstemp(prefix=f".{SIGNER_FILE}.", suffix=".tmp", dir=folder)
        tmp = Path(name)  # mkstemp makes it 0600: a key, for its owner only
        with os.fdopen(fd, "wb") as f:
            f.write(leaf + ca_cert + key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, bundle)  # never replaces: a bundle another process made stays
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    if not ca.is_file():
        from vqclip.state import atomic_write

        atomic_write(ca, _pem_blocks(bundle.read_bytes(), b"CERTIFICATE")[1])
    return bundle, ca


def _make_identity() -> tuple[bytes, bytes, bytes]:
    """A fresh root CA and a leaf for signing (ES256); PEM of the leaf, the CA, the leaf's key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vqclip local identity"),
            ]
        )

    def usage(sign: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(
            ["content_commitment", "key_encipherment", "data_encipherment", "key_agreement"],
            False,
        )
        return x509.KeyUsage(
            digital_signature=sign,
            key_cert_sign=not sign,
            crl_sign=not sign,
            encipher_only=False,
            decipher_only=False,
            **flags,
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(hours=1)  # tolerate a clock a little behind
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = name("vqclip local root (this machine only)")
    ca = (
        x509.CertificateBuilder()
        .subject_name(root)
        .issuer_name(root)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    # Without a timestamp authority a credential reads "expired" once its leaf has: 25 years.
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("vqclip signer (this machine)"))
        .issuer_name(root)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=365 * 25))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return leaf.public_bytes(pem), ca.public_bytes(pem), key


def _pem_blocks(data: bytes, kind: bytes) -> list[bytes]:
    """The PEM blocks of one kind (b"CERTIFICATE", b"PRIVATE KEY"…) in ``data``, in order."""
    blocks, begin = [], b"-----BEGIN "
    for part in data.split(begin)[1:]:
        head, _, _ = part.partition(b"-----")
        if head.endswith(kind):
            end = part.index(b"-----END ")
            tail = part.index(b"-----", end + 9) + 5
            blocks.append(begin + part[:tail] + b"\n")
    return blocks


# --- signing --------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise CredentialError(
            f"Cannot read the signing {what} {path} ({error.strerror or error}). Give a PEM "
            f"file you can read, or leave out --signing-cert/--signing-key to sign with the "
            "local identity vqclip makes in its cache folder."
        ) from None


def _algorithm(key_pem: bytes, path: str) -> str:
    """The c2pa signing algorithm that fits a PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise CredentialError(
            f"The signing key {path} is not an unencrypted PEM private key ({error}). "
            "Give the key that belongs to --signing-cert, without a password."
        ) from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise CredentialError(
        f"The signing key {path} is of a kind C2PA does not sign with "
        f"({type(key).__name__}); use an EC P-256/P-384/P-521, RSA or Ed25519 key."
    )


def _material(signing: Signing) -> tuple[bytes, bytes, str]:
    """(certificate chain PEM, key PEM, algorithm) for ``signing``."""
    if (signing.cert is None) != (signing.key is None):
        raise CredentialError(
            "Give both --signing-cert and --signing-key (the certificate chain and its private "
            "key), or neither to sign with the local identity."
        )
    if signing.cert is None:
        bundle, _ = local_identity()
        data = bundle.read_bytes()
        chain, keys = _pem_blocks(data, b"CERTIFICATE"), _pem_blocks(data, b"PRIVATE KEY")
        if len(chain) != 2 or len(keys) != 1:
            raise CredentialError(
                f"The local signing identity {bundle} is damaged (it should hold two "
                "certificates and one key). Delete it (and local-ca.pem beside it): vqclip "
                "makes a new one, and files signed before verify against the old CA only."
            )
        return b"".join(chain), keys[0], "es256"
    chain = b"".join(_pem_blocks(_read(signing.cert, "certificate"), b"CERTIFICATE"))
    if not chain:
        raise CredentialError(
            f"The signing certificate {signing.cert} holds no PEM certificate "
            "('-----BEGIN CERTIFICATE-----'). Give the leaf certificate followed by its CA chain."
        )
    key = _read(signing.key, "key")
    return chain, key, _algorithm(key, signing.key)


# The native objects are cached per process: a forked child (a worker, a test's kill
# target) finds its parent's handles invalid, so the pid is part of each key.
@functools.lru_cache(maxsize=8)
def _signer(chain: bytes, key: bytes, alg: str, timestamp_url: str | None, pid: int) -> Any:
    import c2pa

    info = c2pa.C2paSignerInfo(alg, chain, key, timestamp_url or None)
    return c2pa.Signer.from_info(info)


@functools.lru_cache(maxsize=2)
def _builder_context(version: str, pid: int) -> Any:
    import c2pa

    settings = {
        **_OFFLINE,
        "builder": {
            "thumbnail": {"enabled": False},  # it would scale 256 px up to 1024 px, +600 KB
            "claim_generator_info": {"name": "vqclip", "version": version},
        },
    }
    return c2pa.Context.from_dict(settings)


def _manifest(title: str, recipe: dict | None, version: str) -> dict[str, Any]:
    agent = {"name": "vqclip", "version": version}
    created: dict[str, Any] = {
        "action": "c2pa.created",
        "digitalSourceType": SOURCE_TYPE,
        "softwareAgent": agent,
    }
    assertions: list[dict[str, Any]] = [
        {"label": "c2pa.actions", "data": {"actions": [created]}},
    ]
    if recipe is not None:
        # JSON round trip: a stray Path or enum in a recipe becomes text, as in the PNG chunk.
        data = json.loads(json.dumps(recipe, default=str))
        if isinstance(data.get("models"), dict):
            created["parameters"] = {"models": data["models"]}
        # As JSON text, the PNG chunk's own form: c2pa's CBOR turns a list of small whole
        # numbers (the size [32, 24]) into a byte string, which would read back as base64.
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        assertions.append({"label": RECIPE_LABEL, "data": {"format": "json", "recipe": text}})
    return {"claim_generator_info": [agent], "title": title, "assertions": assertions}


def prepare(signing: Signing | None) -> str | None:
    """Check that ``signing`` can sign, by signing a 1-pixel PNG in memory, before anything
    is written (CredentialError if not); the reason credentials are off (None: they are on)."""
    if signing is None:
        return "--no-credentials was given"
    reason = unavailable()
    if reason is not None:
        return reason
    from PIL import Image

    source = io.BytesIO()
    Image.new("RGB", (1, 1)).save(source, format="PNG")
    source.seek(0)
    try:
        _sign(source, io.BytesIO(), "image/png", None, signing, "check.png")
    except CredentialError as error:
        raise CredentialError(
            f"{error} The certificate must be a leaf (not a CA) allowed to sign "
            "(digitalSignature), followed by its CA chain, and the key must be its own."
        ) from None
    return None


def sign_file(
    path: str | os.PathLike,
    recipe: dict | None = None,
    signing: Signing | None = LOCAL,
    mime: str | None = None,
    title: str | None = None,
) -> bool:
    """Sign the file at ``path`` in place (meant for the temporary file of an atomic write:
    nothing may be written into it afterwards); True when it was signed."""
    if signing is None:
        return False
    reason = unavailable()
    if reason is not None:
        _notice_off(reason)
        return False
    path = Path(path)
    title = title or path.name
    mime = mime or MIME_TYPES.get(Path(title).suffix.lower())
    if mime is None:
        raise CredentialError(f"Cannot sign {title}: only PNG, GIF and MP4 files are signed.")
    signed = path.with_name(path.name + ".c2pa.tmp")  # a torn one is swept like any temp file
    try:
        with open(path, "rb") as source, open(signed, "w+b") as dest:
            _sign(source, dest, mime, recipe, signing, title)
        os.replace(signed, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            signed.unlink()
    return True


def _sign(
    source: Any, dest: Any, mime: str, recipe: dict | None, signing: Signing, title: str
) -> None:
    import c2pa

    import vqclip

    chain, key, alg = _material(signing)
    version = vqclip.__version__
    try:
        signer = _signer(chain, key, alg, signing.timestamp_url, os.getpid())
        builder = c2pa.Builder(
            _manifest(title, recipe, version), context=_builder_context(version, os.getpid())
        )
        with builder:
            builder.sign(signer, mime, source, dest)
    except c2pa.C2paError as error:
        raise CredentialError(f"c2pa could not sign {title} ({error}).") from None


# --- verification ---------------------------------------------------------------------------

_EXPLAINED = {
    "signingCredential.untrusted": (
        "the signing certificate is not on any trust list given (a local vqclip identity never "
        "is): the file is intact since it was signed, by whoever holds that key. Pass "
        "--trust-anchor with the CA that issued it (CACHE/credentials/local-ca.pem for files "
        "made on this machine) to check it is that key"
    ),
    "assertion.dataHash.mismatch": "the file's bytes changed after it was signed",
    "assertion.bmffHash.mismatch": "the video's bytes changed after it was signed",
    "signingCredential.expired": (
        "the signing certificate had expired when the file was signed, or has expired since "
        "and the file carries no timestamp"
    ),
}


@dataclass(frozen=True)
class Verdict:
    """What a file's content credential says. ``state``: "trusted" (valid and signed under a
    trust anchor given), "valid" (intact, signer not on a trust list), "invalid" (changed after
    signing, or a broken manifest) or "missing" (no manifest at all)."""

    path: Path
    state: str
    reasons: list[str] = field(default_factory=list)
    signer: str | None = None
    manifest: dict | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("trusted", "valid")

    def explain(self) -> str:
        """A few lines for people: the state, who signed, and why."""
        lines = [f"{self.path}: {self.state}"]
        if self.signer:
            lines.append(f"  signed by: {self.signer}")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def verify(
    path: str | os.PathLike,
    trust_anchor: str | os.PathLike | None = None,
    data: bytes | None = None,
) -> Verdict:
    """Check a file's content credential offline, optionally against a PEM trust anchor.
    ``data``: the file's bytes already in memory (``path`` then only names it)."""
    path = Path(path)
    if data is None and not path.is_file():
        raise CredentialError(f"{path} does not exist or is not a file. Check the path.")
    reason = unavailable()
    if reason is not None:
        raise CredentialError(f"Cannot verify {path}: {reason}.")
    import c2pa

    settings: dict[str, Any] = dict(_OFFLINE)
    if trust_anchor is not None:
        anchors = _pem_blocks(_read(str(trust_anchor), "trust anchor"), b"CERTIFICATE")
        if not anchors:
            raise CredentialError(
                f"The trust anchor {trust_anchor} holds no PEM certificate. Give the CA "
                "certificate (e.g. CACHE/credentials/local-ca.pem), not a key."
            )
        settings["trust"] = {"user_anchors": b"".join(anchors).decode()}
    mime = MIME_TYPES.get(path.suffix.lower())
    try:
        with io.BytesIO(data) if data is not None else open(path, "rb") as stream:
            reader = c2pa.Reader.try_create(mime, stream, None, c2pa.Context.from_dict(settings))
            if reader is None:
                return Verdict(path, "missing", [_MISSING])
            with reader:
                state = (reader.get_validation_state() or "Invalid").lower()
                results = (reader.get_validation_results() or {}).get("activeManifest") or {}
                manifest = reader.get_active_manifest()
    except c2pa.C2paError.NotSupported:
        raise CredentialError(
            f"{path} is not a file kind content credentials are checked in; vqclip signs PNG, "
            "GIF and MP4 files. Give one of those."
        ) from None
    except c2pa.C2paError as error:
        return Verdict(path, "invalid", [f"the manifest cannot be read ({error})"])
    failures = results.get("failure") or []
    reasons = [
        _EXPLAINED.get(item.get("code"), f"{item.get('code')}: {item.get('explanation')}")
        for item in failures
    ]
    if state not in ("trusted", "valid"):
        state = "invalid"
    info = (manifest or {}).get("signature_info") or {}
    signer = ", ".join(str(info[k]) for k in ("common_name", "issuer") if info.get(k)) or None
    return Verdict(path, state, list(dict.fromkeys(reasons)), signer, manifest)


def summary(path: str | os.PathLike, data: bytes | None = None) -> str:
    """One short phrase for a gallery or ``vqclip info``: the credential's state, offline."""
    try:
        verdict = verify(path, data=data)
    except CredentialError as error:
        return f"content credential not checked ({error})"
    words = {
        "trusted": "valid, signed by a trusted certificate",
        "valid": "valid (signed by a key not on a trust list, such as this machine's)",
        "invalid": "INVALID: the file changed after it was signed, or its manifest is broken",
        "missing": "none (unsigned, or stripped by a re-save)",
    }
    return f"content credential: {words[verdict.state]}"


_MISSING = (
    "no content credential (C2PA manifest): the file was made with --no-credentials or by "
    "another tool, or it was re-saved, uploaded or screenshotted, which drops it"
)


# --- the file without its manifest -----------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")


def content_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes without its C2PA manifest (PNG caBX chunks, the GIF C2PA application
    extension, the MP4 C2PA uuid box): pixels and recipe, equal for two signings of one file."""
    data = Path(path).read_bytes()
    if data.startswith(_PNG_SIGNATURE):
        return _strip_png(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _strip_gif(data)
    if data[4:8] == b"ftyp":
        return _strip_boxes(data)
    return data


def _strip_png(data: bytes) -> bytes:
    parts, at = [data[:8]], 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 12 + length  # length, type, data, CRC
        if data[at + 4 : at + 8] != b"caBX":
            parts.append(data[at:end])
        at = end
    return b"".join(parts) + data[at:]


def _strip_gif(data: bytes) -> bytes:
    def sub_blocks(at: int) -> int:  # the position after a chain of sub-blocks
        while data[at]:
            at += data[at] + 1
        return at + 1

    flags = data[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)  # header, screen, palette
    parts = [data[:at]]
    while at < len(data) and data[at] != 0x3B:  # 0x3B: trailer
        start = at
        if data[at] == 0x21:  # extension: label, then sub-blocks
            end = sub_blocks(at + 2)
            c2pa = data[at + 1] == 0xFF and data[at + 3 : at + 11] == b"C2PA_GIF"
            if not c2pa:
                parts.append(data[start:end])
        elif data[at] == 0x2C:  # image: descriptor, local palette, LZW size, sub-blocks
            local = data[at + 9]
            at += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
            end = sub_blocks(at + 1)
            parts.append(data[start:end])
        else:
            break  # not a block this parser knows: keep the rest as it is
        at = end
    return b"".join(parts) + data[at:]


def _strip_boxes(data: bytes) -> bytes:
    parts, at = [], 0
    while at + 8 <= len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        if size == 1:
            (size,) = struct.unpack(">Q", data[at + 8 : at + 16])
        elif size == 0:
            size = len(data) - at
        if size < 8:
            break
        box, extended = data[at + 4 : at + 8], data[at + 8 : at + 24]
        if not (box == b"uuid" and extended == _C2PA_UUID):
            parts.append(data[at : at + size])
        at += size
    return b"".join(parts) + data[at:]
