-- Issue 12: which daemon instance runs (or ran) a deploy.
ALTER TABLE deploys ADD COLUMN runner TEXT;
