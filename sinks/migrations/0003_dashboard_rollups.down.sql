DROP TABLE IF EXISTS {db}.events_per_minute_mv;
DROP TABLE IF EXISTS {db}.latency_per_minute_mv;
DROP TABLE IF EXISTS {db}.events_per_minute;
DROP TABLE IF EXISTS {db}.latency_per_minute
