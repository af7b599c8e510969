WITH t AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY transaction_id ORDER BY last_updated DESC) AS rn FROM "transaction")
SELECT transaction_id, transaction_type, sales_order_id, purchase_order_id FROM t WHERE rn = 1
