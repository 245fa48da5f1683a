-- Fencing and evacuation of a dead node (issue 27). `fenced_at` is the
-- operator's assertion that the node is dead (or cut off for good and its
-- guests stopped): nothing is placed there any more, and only then may its
-- hostings be evacuated, i.e. restored on other nodes from their newest
-- backup. Evacuation is desired state like any restore: the hosting's
-- placement is cleared and a new disk epoch names the backup.
alter table nodes add column fenced_at timestamptz;
