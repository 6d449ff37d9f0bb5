"""job runs apart from attempts, lost runs, request hash, pending callbacks

Revision ID: 0003
Revises: 0002

``attempts`` used to be the run number; it now counts the runs a worker started. Existing
rows keep their number as the run.
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('run', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('lost_runs', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('callback_pending', sa.Boolean(), server_default='0',
                                      nullable=False))
    op.execute("UPDATE jobs SET run = attempts WHERE attempts > 1")


def downgrade() -> None:
    op.execute("UPDATE jobs SET attempts = run")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('callback_pending')
        batch_op.drop_column('request_hash')
        batch_op.drop_column('lost_runs')
        batch_op.drop_column('run')
