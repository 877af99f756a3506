DROP TABLE IF EXISTS {db}.dead_letters
