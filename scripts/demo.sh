#!/usr/bin/env bash
# make demo: capture a database written through the sqlite3 shell into the default local
# target, then list, restore (at an earlier transaction and at the latest), verify, and compare
# with the primary. Needs no server.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
EXT=$ROOT/target/release/libwalstream
CLI=$ROOT/target/release/walstream
SQLITE3=${SQLITE3:-/usr/bin/sqlite3}
DEMO=${DEMO_DIR:-$ROOT/target/demo}

rm -rf "$DEMO" && mkdir -p "$DEMO" && cd "$DEMO"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. An application writes app.db through the sqlite3 shell with walstream loaded"
"$SQLITE3" <<SQL
.load $EXT
.open file:app.db?vfs=walstream
PRAGMA journal_mode=WAL;
CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER);
INSERT INTO accounts(owner, balance) VALUES ('alice', 100), ('bob', 50);
UPDATE accounts SET balance = balance - 30 WHERE owner = 'alice';
UPDATE accounts SET balance = balance + 30 WHERE owner = 'bob';
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
  INSERT INTO accounts(owner, balance) SELECT 'user' || i, i FROM n;
DELETE FROM accounts WHERE id % 7 = 0;
SELECT 'walstream_status: ' || walstream_status();
SQL

say "2. The stream, beside the database in app.db-walstream/"
"$CLI" ls app.db-walstream

say "3. Restore at txn 3 (after alice paid bob 30, before bob was credited)"
"$CLI" restore app.db-walstream -o at-txn-3.db --txn 3
"$SQLITE3" at-txn-3.db "SELECT owner, balance FROM accounts ORDER BY id LIMIT 2;"

say "4. Restore the latest state"
"$CLI" restore app.db-walstream -o latest.db

say "5. Verify the whole chain"
"$CLI" verify app.db-walstream

say "6. Compare with the primary"
if cmp app.db latest.db; then
  echo "latest.db is byte-identical to app.db"
else
  echo "MISMATCH: latest.db differs from app.db" >&2
  exit 1
fi
primary=$("$SQLITE3" app.db "SELECT count(*), sum(balance) FROM accounts;")
restored=$("$SQLITE3" latest.db "SELECT count(*), sum(balance) FROM accounts;")
echo "primary:  $primary"
echo "restored: $restored"
[ "$primary" = "$restored" ]
echo
echo "demo files are in $DEMO"
