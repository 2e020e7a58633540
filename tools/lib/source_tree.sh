# shellcheck shell=bash
# source_tree DIR: prints the git tree of DIR's files as they are (tracked and untracked, not ignored),
# hashed through a scratch index, so that neither the real index nor HEAD matters: tools/bundle_deps
# records it in a bundle's MANIFEST and tools/gpu_check.sh compares it with its checkout's (a copied
# checkout can carry a stale .git: the device tool's did). Prints nothing (status 1) when DIR is not a
# git checkout, or when its untracked files hold over 64 MiB (a dataset left in the tree would be
# hashed, and copied into .git's objects, at every run).
source_tree() {
  local dir=$1 idx kb tree
  git -C "$dir" rev-parse --git-dir >/dev/null 2>&1 || return 1
  kb=$(git -C "$dir" ls-files -z --others --exclude-standard 2>/dev/null |
    (cd "$dir" && xargs -0 -r du -ck --apparent-size 2>/dev/null) | awk 'END { print ($1 == "" ? 0 : $1) }')
  ((kb <= 65536)) || return 1
  idx=$(mktemp -u "${TMPDIR:-/tmp}/source_tree_index.XXXXXX")
  tree=$(GIT_INDEX_FILE=$idx git -C "$dir" add -A . 2>/dev/null && GIT_INDEX_FILE=$idx git -C "$dir" write-tree 2>/dev/null)
  rm -f "$idx"
  [[ -n $tree ]] || return 1
  printf '%s\n' "$tree"
}
