DROP TABLE IF EXISTS {db}.notification_events
