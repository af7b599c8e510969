-- Every date the facts refer to.
WITH d AS (
  SELECT CAST(CAST(created_at AS TIMESTAMP) AS DATE) AS date_id FROM sales_order
  UNION SELECT CAST(CAST(last_updated AS TIMESTAMP) AS DATE) FROM sales_order
  UNION SELECT CAST(agreed_payment_date AS DATE) FROM sales_order
  UNION SELECT CAST(agreed_delivery_date AS DATE) FROM sales_order
)
SELECT date_id,
  CAST(date_part('year', date_id) AS INT) AS year,
  CAST(date_part('month', date_id) AS INT) AS month,
  CAST(date_part('day', date_id) AS INT) AS day,
  CAST(date_part('dow', date_id) AS INT) AS day_of_week,
  to_char(date_id, '%A') AS day_name,
  to_char(date_id, '%B') AS month_name,
  CAST(date_part('quarter', date_id) AS INT) AS quarter
FROM d WHERE date_id IS NOT NULL
