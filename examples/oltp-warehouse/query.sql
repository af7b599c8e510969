-- Units and value sold per counterparty, currency and month (latest version of each order).
WITH latest AS (
  SELECT f.*, ROW_NUMBER() OVER (PARTITION BY sales_order_id ORDER BY source_updated_at DESC) AS rn
  FROM fact_sales_order f
)
SELECT c.counterparty_legal_name AS counterparty,
       cur.currency_code AS currency,
       substr(CAST(l.created_date AS TEXT), 1, 7) AS month,
       SUM(l.units_sold) AS units,
       ROUND(SUM(l.units_sold * l.unit_price), 2) AS value
FROM latest l
JOIN dim_counterparty c ON c.counterparty_id = l.counterparty_id
JOIN dim_currency cur ON cur.currency_id = l.currency_id
WHERE l.rn = 1
GROUP BY 1, 2, 3
ORDER BY value DESC
LIMIT 10;
