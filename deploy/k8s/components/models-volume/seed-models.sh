#!/bin/sh
# Fills an empty models volume with the versions bundled in the image, each one atomically:
# copied under a hidden name on the volume, then renamed to its number, so the service's poll
# never sees half a version. A volume that already holds a version is left as it is (a version
# removed from it on purpose does not come back at the next pod start). Pods starting at once
# may race: each copies into its own hidden directory, the first rename wins and the others
# drop their copy (a rename onto a directory that holds files fails).
#
# The `seed-models` initContainer (deployment-patch.yaml) runs it from the ConfigMap made of
# this file, with SEED_FROM (the image's own models) and SEED_INTO (the volume, writable there
# only). tests/deploy/test_k8s.py runs it too.
set -eu
from=${SEED_FROM:?the directory of the versions to copy}
into=${SEED_INTO:?the models volume}

# The first version directory (a name made of digits) in $1, or nothing.
first_version() {
    for entry in "$1"/*; do
        name=${entry##*/}
        case $name in '' | *[!0-9]*) continue ;; esac
        [ -d "$entry" ] && { echo "$name"; return 0; }
    done
    return 0
}

present=$(first_version "$into")
if [ -n "$present" ]; then
    echo "seed-models: $into holds version $present already; nothing copied"
    exit 0
fi

for source in "$from"/*; do
    version=${source##*/}
    case $version in '' | *[!0-9]*) continue ;; esac
    [ -d "$source" ] || continue
    temporary="$into/.tmp-seed-$version-${HOSTNAME:-pod}-$$"
    rm -rf "$temporary"
    cp -R "$source" "$temporary"
    if mv -T "$temporary" "$into/$version" 2>/dev/null; then
        echo "seed-models: copied version $version into $into"
    else
        rm -rf "$temporary"
        echo "seed-models: version $version appeared in $into meanwhile; kept that one"
    fi
done

if [ -z "$(first_version "$into")" ]; then
    echo "seed-models: $from holds no version to copy" >&2
    exit 1
fi
