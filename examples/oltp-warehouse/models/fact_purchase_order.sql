SELECT
  CAST(purchase_order_id AS VARCHAR) || '@' || CAST(last_updated AS VARCHAR) AS purchase_record_id,
  purchase_order_id,
  CAST(CAST(created_at AS TIMESTAMP) AS DATE) AS created_date,
  to_char(CAST(created_at AS TIMESTAMP), '%H:%M:%S%.3f') AS created_time,
  CAST(CAST(last_updated AS TIMESTAMP) AS DATE) AS last_updated_date,
  to_char(CAST(last_updated AS TIMESTAMP), '%H:%M:%S%.3f') AS last_updated_time,
  staff_id, counterparty_id, item_code, item_quantity,
  CAST(item_unit_price AS DECIMAL(12, 2)) AS item_unit_price,
  currency_id,
  CAST(agreed_delivery_date AS DATE) AS agreed_delivery_date,
  CAST(agreed_payment_date AS DATE) AS agreed_payment_date,
  agreed_delivery_location_id
FROM purchase_order_new
