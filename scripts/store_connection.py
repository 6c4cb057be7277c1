"""Store the ``openai_default`` connection in the metadata database, pointed at a local emulator.

Used by ``make airflow`` and ``make cluster``: in the database (not an environment variable) so the UI lists
it and every component reads it there. ``port=0`` because the hook ignores it and the Test button of Airflow
3.3's connection list sends ``port: Number(null)``, i.e. 0: the API refuses to reuse the stored key for a
"different" port than a stored NULL (400 Bad Request).

    python scripts/store_connection.py EMULATOR_V1_URL DESCRIPTION
"""

from __future__ import annotations

import sys

from airflow.models import Connection
from airflow.utils.session import create_session


def main(url: str, description: str) -> None:
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "openai_default").delete()
        session.add(
            Connection(
                conn_id="openai_default",
                conn_type="openai_batch",
                description=description,
                host=url,
                port=0,
                password="emulator-key-not-secret",
            )
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
