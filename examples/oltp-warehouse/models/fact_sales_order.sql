-- One row per sales order version (append-versions on sales_record_id).
SELECT
  CAST(sales_order_id AS VARCHAR) || '@' || CAST(last_updated AS VARCHAR) AS sales_record_id,
  sales_order_id,
  CAST(CAST(created_at AS TIMESTAMP) AS DATE) AS created_date,
  to_char(CAST(created_at AS TIMESTAMP), '%H:%M:%S%.3f') AS created_time,
  CAST(CAST(last_updated AS TIMESTAMP) AS DATE) AS last_updated_date,
  to_char(CAST(last_updated AS TIMESTAMP), '%H:%M:%S%.3f') AS last_updated_time,
  staff_id AS sales_staff_id,
  counterparty_id,
  units_sold,
  CAST(unit_price AS DECIMAL(10, 2)) AS unit_price,
  currency_id,
  design_id,
  CAST(agreed_payment_date AS DATE) AS agreed_payment_date,
  CAST(agreed_delivery_date AS DATE) AS agreed_delivery_date,
  agreed_delivery_location_id,
  CAST(last_updated AS TIMESTAMP) AS source_updated_at
FROM sales_order_new
