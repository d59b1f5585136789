"""networks.free_from: where the search for a free address starts

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 02:40:00.000000

Existing networks get NULL (not known yet): the first allocation on each reads its leases once
and sets the column.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('free_from', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.drop_column('free_from')
