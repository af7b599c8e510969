WITH s AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY staff_id ORDER BY last_updated DESC) AS rn FROM staff),
     d AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY department_id ORDER BY last_updated DESC) AS rn FROM department)
SELECT s.staff_id, s.first_name, s.last_name, d.department_name, d.location, s.email_address
FROM s JOIN d ON s.department_id = d.department_id AND d.rn = 1
WHERE s.rn = 1
