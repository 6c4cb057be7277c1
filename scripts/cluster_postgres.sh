# Sourced by scripts/cluster.sh: PostgreSQL's system user and data directory for make cluster.
# Needs CLUSTER_HOME, PG_BIN and PG_PASSWORD (CLUSTER_PG_ROOT and CLUSTER_FRESH are read too);
# sets PG_USER, PG_RUN (a command prefix running as PG_USER), PGDATA and PGSOCK, and defines as_pg.
# shellcheck shell=bash

postgres_user() { # PG_USER, and PG_RUN / as_pg: run a command as that user
  PG_USER=${CLUSTER_PG_SYSTEM_USER:-postgres}
  PG_RUN=()
  if [[ $(id -u) == 0 ]]; then
    id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    # setpriv execs the command itself (runuser would stay as its parent): the pid we keep is the postmaster's.
    PG_RUN=(setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --init-groups --)
  else
    PG_USER=$(id -un)
  fi
}
as_pg() { "${PG_RUN[@]}" "$@"; }

postgres_dirs() { # PGDATA and PGSOCK, in directories PG_USER can reach
  if [[ $PG_USER == "$(id -un)" ]]; then
    PGDATA=$CLUSTER_HOME/pg
    PGSOCK=$CLUSTER_HOME/pgsock
    mkdir -p "$PGSOCK"
    return
  fi
  # PostgreSQL runs as another user (initdb refuses root), who may not enter the checkout: a home directory or a
  # `mktemp -d` folder is 0700. So its files live under CLUSTER_PG_ROOT, in a directory of this CLUSTER_HOME's
  # own that only PG_USER may enter, and CLUSTER_HOME/pg links to them; the checkout's permissions stay as they are.
  local root=${CLUSTER_PG_ROOT:-/var/lib/openai-batch-cluster} dir
  dir=$root/$(printf '%s' "$CLUSTER_HOME" | sha256sum | cut -c1-16)
  if [[ ${CLUSTER_FRESH:-0} == 1 ]]; then
    rm -rf "$dir"
  fi
  mkdir -p -m 0711 "$root" # others may pass through to their own directory, not list the clusters
  install -d -o "$PG_USER" -g "$(id -g "$PG_USER")" -m 0700 "$dir" "$dir/sock"
  if [[ -d $CLUSTER_HOME/pg && ! -L $CLUSTER_HOME/pg ]]; then # made inside CLUSTER_HOME by an earlier version
    if [[ -s $CLUSTER_HOME/pg/PG_VERSION && ! -e $dir/data ]]; then
      mv "$CLUSTER_HOME/pg" "$dir/data"
    else
      rm -rf "$CLUSTER_HOME/pg"
    fi
  fi
  rm -rf "$CLUSTER_HOME/pgsock"
  ln -sfn "$dir/data" "$CLUSTER_HOME/pg"
  PGDATA=$dir/data
  PGSOCK=$dir/sock
}

postgres_init() { # initdb, unless PGDATA already holds a cluster
  if [[ ! -s $PGDATA/PG_VERSION ]]; then
    echo "Creating the PostgreSQL cluster in $PGDATA ..."
    rm -rf "$PGDATA"
    mkdir -p "$PGDATA"
    chown "$PG_USER" "$PGDATA" "$PGSOCK"
    local pwfile # beside the data, where PG_USER can read it (TMPDIR may be private)
    pwfile=$(mktemp "$(dirname "$PGDATA")/initdb-password.XXXXXX")
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    chown "$PG_USER" "$pwfile"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U airflow --pwfile="$pwfile" --auth-local=scram-sha-256 \
      --auth-host=scram-sha-256 -E UTF8 >"$CLUSTER_HOME/initdb.log" 2>&1 || {
      rm -f "$pwfile"
      cat "$CLUSTER_HOME/initdb.log" >&2
      return 1
    }
    rm -f "$pwfile"
  fi
  chown "$PG_USER" "$PGSOCK"
}
