WITH d AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY design_id ORDER BY last_updated DESC) AS rn FROM design)
SELECT design_id, design_name, file_location, file_name FROM d WHERE rn = 1
