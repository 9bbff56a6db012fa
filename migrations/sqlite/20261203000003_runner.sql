-- Issue 12: which daemon instance runs (or ran) a deploy.
ALTER TABLE deploys ADD COLUMN runner TEXT;

-- At most one running deploy per (service, destination), held by the database itself: a second claim fails.
CREATE UNIQUE INDEX one_running_deploy ON deploys (service, IFNULL(destination, '')) WHERE state = 'running';
