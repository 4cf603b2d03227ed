-- A done job keeps the highest version of its phase, so a later attempt of the same input
-- (a redelivery after a crash, a replay) can no longer move it back to processing or dead.
-- Versions are phase * 1000000 + attempt * 10 + rank; done is now phase * 1000000 + 999999.
UPDATE jobs
SET version = (version / 1000000) * 1000000 + 999999
WHERE status = 'done' AND version % 1000000 <> 999999;
