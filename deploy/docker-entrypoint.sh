#!/bin/sh
# Entry point of the relay image. Started as root, it gives the data and
# log folders to the relay's user, because a freshly mounted volume
# belongs to root, and runs the command as that user. Started as any other
# user, it runs the command as is. So the relay never runs as root.
set -eu

user="${YAOK_USER:-yaok}"
data_dir="${YAOK_DATA_DIR:-/data}"
log_dir="${YAOK_LOG_DIR:-/var/log/yaok-relay}"

if [ "$(id -u)" = 0 ]; then
    for dir in "$data_dir" "$log_dir"; do
        mkdir -p "$dir"
        chown -R "$user:$(id -gn "$user")" "$dir"
    done
    exec setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$@"
fi
exec "$@"
