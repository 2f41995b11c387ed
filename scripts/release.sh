#!/usr/bin/env bash
# Publish this release under a GitHub account: bash scripts/release.sh OWNER
#
# Writes github.com/OWNER/vqclip into README.md's Colab badges and into every notebook's
# badge and REPO, checks that every notebook's REF is "v" + the package version (the tag
# its install is pinned to), commits that, and makes the tag. Push afterwards with
#   git push origin HEAD vX.Y.Z
# Refuses (exit 2, nothing changed) on a bad name, uncommitted changes, a REF that is not
# the version, or a tag that already exists.
set -euo pipefail

fail() {
    echo "release.sh: $*" >&2
    exit 2
}

[ $# -eq 1 ] || fail "give the GitHub account that publishes vqclip, e.g. bash scripts/release.sh alice"
owner=$1
[[ $owner =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,37}[A-Za-z0-9])?$ ]] ||
    fail "'$owner' is not a GitHub account name (letters, digits and inner hyphens, up to 39)."
root=$(git rev-parse --show-toplevel 2>/dev/null) || fail "run it inside the vqclip repository."
cd "$root"
git diff --quiet && git diff --cached --quiet ||
    fail "the working tree has uncommitted changes: commit or stash them first."

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' vqclip/__init__.py)
[ -n "$version" ] || fail "no __version__ in vqclip/__init__.py."
tag="v$version"
notebooks=(notebooks/*.ipynb)
for nb in "${notebooks[@]}"; do
    grep -q "\"REF = \\\\\"$tag\\\\\"" "$nb" ||
        fail "$nb does not pin REF = \"$tag\" (the package version): set it, commit, run again."
done
if git rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
    fail "the tag $tag already exists: raise __version__ (and every REF) for a new release."
fi

# The badges (colab.research.google.com/github/OWNER/vqclip) and REPO (github.com/OWNER/vqclip).
sed -E -i "s#(colab\.research\.google\.com/github|github\.com)/[A-Za-z0-9-]+/vqclip#\1/$owner/vqclip#g" \
    README.md "${notebooks[@]}"
for nb in "${notebooks[@]}"; do
    grep -q "REPO = \\\\\"https://github.com/$owner/vqclip\\\\\"" "$nb" ||
        fail "$nb: REPO was not written (is its set-up cell the shared one?)."
done

git add README.md "${notebooks[@]}"
git diff --cached --quiet || git commit -q -m "Publish $tag as github.com/$owner/vqclip"
git tag "$tag"
echo "Tagged $tag for github.com/$owner/vqclip. Push it: git push origin HEAD $tag"
