WITH p AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY payment_type_id ORDER BY last_updated DESC) AS rn FROM payment_type)
SELECT payment_type_id, payment_type_name FROM p WHERE rn = 1
